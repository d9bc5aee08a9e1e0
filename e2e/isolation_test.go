package e2e

// Isolation over CONNECT-IP (issue 7): what a client may not reach through
// the server, and what becomes of the packets it sends there anyway.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Pool addresses of the server's default pools (startClient checks that
// clients get addresses from them).
const (
	gateway4  = "100.64.0.1"
	gateway6  = "fd6d:6173:7175:6500::1"
	serverTUN = "masqued0"
)

// probeOutput is spoofclient's output in probe mode.
type probeOutput struct {
	Assigned []string                `json:"assigned"`
	Dropped  map[string]int          `json:"dropped"`
	Probes   map[string]*probeCounts `json:"probes"`
	ICMPFrom map[string]int          `json:"icmp_from"`
	Other    int                     `json:"other"`
}

// probeCounts are spoofclient's counts for one probed destination.
type probeCounts struct {
	Sent    map[string]int `json:"sent"`    // by kind: udp, tcp, echo
	ICMP    map[string]int `json:"icmp"`    // errors quoting a probe, by "type/code"
	Replies map[string]int `json:"replies"` // packets from the destination, by kind
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// runProbes runs spoofclient in probe mode from the client namespace as
// carol and returns its output.
func runProbes(t *testing.T, tp *topo, args ...string) probeOutput {
	t.Helper()
	argv := append([]string{env.spoofclient, "-server", serverAddr, "-ca", env.certDir + "/ca.crt", "-token", env.token["carol"]}, args...)
	r := runIn(t, tp.client, 60*time.Second, argv...)
	if r.code != 0 {
		t.Fatalf("spoofclient: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, tail(r.stderr, 3000))
	}
	var out probeOutput
	lastJSON(t, "spoofclient", r.stdout, &out)
	return out
}

// listenerControl sets SO_REUSEADDR, as the sockets of countGroupUDP do
// (those are bound to the wildcard address and the same port), and
// IP_FREEBIND, which lets a socket bind to an anycast address.
func listenerControl(_, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = errors.Join(
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1),
			syscall.SetsockoptInt(int(fd), syscall.SOL_IP, syscall.IP_FREEBIND, 1))
	})
	return errors.Join(err, serr)
}

// countUDP counts the datagrams that a socket bound to addr in ns receives
// until the test ends (listenerControl).
func countUDP(t *testing.T, ns, addr string) *atomic.Int64 {
	t.Helper()
	var pc *net.UDPConn
	err := inNetns(ns, func() error {
		lc := net.ListenConfig{Control: listenerControl}
		c, err := lc.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			return err
		}
		pc = c.(*net.UDPConn)
		return nil
	})
	if err != nil {
		t.Fatalf("listen udp %s in %s: %v", addr, ns, err)
	}
	return countDatagrams(t, pc)
}

// countGroupUDP counts the datagrams to group:port that a socket in ns
// receives after joining group on the interface ifName.
func countGroupUDP(t *testing.T, ns, ifName, group string, port int) *atomic.Int64 {
	t.Helper()
	var pc *net.UDPConn
	err := inNetns(ns, func() error {
		ifi, err := net.InterfaceByName(ifName)
		if err != nil {
			return err
		}
		network := "udp4"
		if strings.Contains(group, ":") {
			network = "udp6"
		}
		pc, err = net.ListenMulticastUDP(network, ifi, &net.UDPAddr{IP: net.ParseIP(group), Port: port})
		return err
	})
	if err != nil {
		t.Fatalf("join %s on %s in %s: %v", group, ifName, ns, err)
	}
	t.Cleanup(func() { pc.Close() })
	return countDatagrams(t, pc)
}

func countDatagrams(t *testing.T, pc *net.UDPConn) *atomic.Int64 {
	var n atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 65536)
		for {
			if _, _, err := pc.ReadFromUDPAddrPort(b); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			n.Add(1)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return &n
}

// countAccepts counts the TCP connections that a listener bound to addr in
// ns (listenerControl) accepts until the test ends; it closes each at once.
func countAccepts(t *testing.T, ns, addr string) *atomic.Int64 {
	t.Helper()
	var ln net.Listener
	err := inNetns(ns, func() error {
		var err error
		lc := net.ListenConfig{Control: listenerControl}
		ln, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen tcp %s in %s: %v", addr, ns, err)
	}
	var n atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			n.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return &n
}

// captureDsts counts tcpdump's packet lines by destination address (tcpdump
// -n prints "TIME IP SRC[.PORT] > DST[.PORT]: ...").
func captureDsts(lines []string) map[string]int {
	out := map[string]int{}
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) < 5 || f[3] != ">" {
			out["?"]++
			continue
		}
		dst := strings.TrimSuffix(f[4], ":")
		if f[1] == "IP" && strings.Count(dst, ".") == 4 || f[1] == "IP6" && strings.Contains(dst, ".") {
			dst = dst[:strings.LastIndexByte(dst, '.')] // the port
		}
		if a, err := netip.ParseAddr(dst); err == nil {
			dst = a.String()
		}
		out[dst]++
	}
	return out
}

// metricDelta is how much the sample of name with labels grew from before to
// after (absent counts as 0).
func metricDelta(before, after, name string, labels ...string) float64 {
	return metricOr0(after, name, labels...) - metricOr0(before, name, labels...)
}

// serverConfig writes a masqued configuration file (TOML, keys the run
// flags) holding text and returns its path.
func serverConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "masqued.conf")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDeniedTargets: over CONNECT-IP, the destinations that policy denies
// by default (the server's loopback, its own addresses on every interface
// and in the pools, the broadcast and subnet-router anycast addresses that
// it takes as its own for its prefixes, the metadata service, link-local,
// multicast and broadcast) are refused: a hostile client (spoofclient, which puts any
// packet into its session, also to addresses its own kernel would keep
// local) sends UDP, TCP SYN and echo probes to each, and none is written
// into the server's TUN (tcpdump there), none hits a UDP or TCP listener
// bound to the address in the server namespace, none is answered; every
// one is counted as destination_denied, and each unicast one is answered by
// ICMP administratively prohibited from the server's gateway address.
// Multicast and broadcast get no ICMP error (RFC 1812 §4.3.2.7, RFC 4443
// §2.4 (e)). The same probes to the target arrive (listener hits, accepted
// connections, echo replies): the probes work.
//
// Listeners bound to loopback could not see a leak anyway (the kernel drops
// a packet to 127.0.0.0/8 or ::1 that arrives on another interface as
// martian); the capture on the TUN is what proves that none got through.
func TestDeniedTargets(t *testing.T) {
	const n = 10 // probes of each kind per destination
	tp := newTopo(t, false)
	srv := tp.startServer(t)

	type probe struct {
		addr      string
		reason    string
		listen    bool // a UDP and a TCP listener are bound to it in the server namespace
		listenUDP bool // a UDP listener only (broadcast: TCP does not accept it)
		noICMP    bool // multicast and broadcast: no ICMP error expected
		control   bool // the target: must arrive
	}
	probes := []probe{
		{addr: "127.0.0.1", reason: "loopback", listen: true},
		{addr: "::1", reason: "loopback", listen: true},
		{addr: serverIP4, reason: "server address (toward the client)", listen: true},
		{addr: "2001:db8:1::2", reason: "server address (toward the client)", listen: true},
		{addr: egressIP4, reason: "server address (egress)", listen: true},
		{addr: "2001:db8:2::1", reason: "server address (egress)", listen: true},
		{addr: gateway4, reason: "server address (TUN gateway)", listen: true},
		{addr: gateway6, reason: "server address (TUN gateway)", listen: true},
		// The server's kernel delivers these to its own sockets too.
		{addr: "198.18.1.255", reason: "directed broadcast (toward the client)", listenUDP: true, noICMP: true},
		{addr: "198.18.2.255", reason: "directed broadcast (egress)", listenUDP: true, noICMP: true},
		{addr: "2001:db8:1::", reason: "subnet-router anycast (toward the client)", listen: true},
		{addr: "2001:db8:2::", reason: "subnet-router anycast (egress)", listen: true},
		{addr: "169.254.169.254", reason: "metadata"},
		{addr: "fd00:ec2::254", reason: "metadata"},
		{addr: "169.254.1.1", reason: "link-local"},
		{addr: "fe80::1", reason: "link-local"},
		{addr: "224.0.0.251", reason: "multicast", noICMP: true},
		{addr: "ff02::fb", reason: "multicast", noICMP: true},
		{addr: "255.255.255.255", reason: "broadcast", noICMP: true},
		{addr: targetIP4, control: true},
		{addr: targetIP6, control: true},
	}
	udpHits := map[string]*atomic.Int64{}
	tcpHits := map[string]*atomic.Int64{}
	for _, p := range probes {
		ns := tp.server
		if p.control {
			ns = tp.target
		}
		if p.listen || p.listenUDP || p.control {
			udpHits[p.addr] = countUDP(t, ns, net.JoinHostPort(p.addr, "9200"))
		}
		if p.listen || p.control {
			tcpHits[p.addr] = countAccepts(t, ns, net.JoinHostPort(p.addr, "9201"))
		}
	}
	// Listeners that would see leaked multicast and broadcast datagrams:
	// group members on the TUN, and a socket bound to the broadcast address.
	// (Go binds a group member to the wildcard address, so the IPv4 one
	// would count leaked broadcast datagrams too.)
	udpHits["224.0.0.251"] = countGroupUDP(t, tp.server, serverTUN, "224.0.0.251", 9200)
	udpHits["ff02::fb"] = countGroupUDP(t, tp.server, serverTUN, "ff02::fb", 9200)
	udpHits["255.255.255.255"] = countUDP(t, tp.server, "255.255.255.255:9200")

	// Everything masqued writes into its TUN from a client (the gateway
	// addresses are the server's own replies going the other way).
	dump := startCaptureOn(t, tp.server, serverTUN, "(src net 100.64.0.0/16 and not src host "+gateway4+") or (src net fd6d:6173:7175:6500::/64 and not src host "+gateway6+")", false)

	var dsts []string
	for _, p := range probes {
		dsts = append(dsts, p.addr)
	}
	before := srv.metrics(t)
	out := runProbes(t, tp, "-probe", strings.Join(dsts, ","), "-kinds", "udp,tcp,echo", "-n", strconv.Itoa(n), "-pps", "500", "-wait", "1s")
	after := srv.metrics(t)
	dump.stop(5 * time.Second)
	tunDsts := captureDsts(nonEmptyLines(dump.stdout.String()))
	t.Logf("spoofclient assigned %v; ICMP errors from %v; unmatched packets %d; dropped client-side %v", out.Assigned, out.ICMPFrom, out.Other, out.Dropped)
	t.Logf("written into the server TUN, by destination: %v", tunDsts)

	deniedSent, unicastSent := 0, 0
	for _, p := range probes {
		key := netip.MustParseAddr(p.addr).String()
		c := out.Probes[key]
		if c == nil {
			t.Errorf("spoofclient reported nothing for %s", key)
			continue
		}
		sent := sum(c.Sent)
		hits := ""
		var udp, tcp int64
		if h := udpHits[p.addr]; h != nil {
			udp = h.Load()
			hits += fmt.Sprintf(", UDP listener hits %d", udp)
		}
		if h := tcpHits[p.addr]; h != nil {
			tcp = h.Load()
			hits += fmt.Sprintf(", TCP connections accepted %d", tcp)
		}
		t.Logf("%-16s %-36s sent %v, ICMP errors %v, replies %v, in server TUN %d%s", key, p.reason, c.Sent, c.ICMP, c.Replies, tunDsts[key], hits)
		for _, k := range []string{"udp", "tcp", "echo"} {
			if c.Sent[k] != n {
				t.Errorf("%s: spoofclient put %d %s probes into the tunnel, want %d (else the test proves nothing)", key, c.Sent[k], k, n)
			}
		}
		if p.control {
			if udp != int64(n) || tcp != int64(n) || c.Replies["echo"] != n {
				t.Errorf("control %s: target got %d UDP probes and accepted %d connections, %d echo replies came back; want %d each", key, udp, tcp, c.Replies["echo"], n)
			}
			if got := sum(c.ICMP); got != 0 {
				t.Errorf("control %s: %d ICMP errors (%v), want 0", key, got, c.ICMP)
			}
			continue
		}
		deniedSent += sent
		if tunDsts[key] != 0 {
			t.Errorf("%s (%s): %d packets written into the server TUN, want 0", key, p.reason, tunDsts[key])
		}
		if udp != 0 || tcp != 0 {
			t.Errorf("%s (%s): %d UDP listener hits and %d accepted TCP connections in the server namespace, want 0", key, p.reason, udp, tcp)
		}
		if r := sum(c.Replies); r != 0 {
			t.Errorf("%s (%s): %d replies (%v), want 0", key, p.reason, r, c.Replies)
		}
		want := map[string]int{}
		if !p.noICMP {
			unicastSent += sent
			code := "3/13" // ICMP destination unreachable, communication administratively prohibited
			if netip.MustParseAddr(p.addr).Is6() {
				code = "1/1" // ICMPv6 destination unreachable, administratively prohibited
			}
			want[code] = sent
		}
		if fmt.Sprint(c.ICMP) != fmt.Sprint(want) {
			t.Errorf("%s (%s): ICMP errors %v, want %v", key, p.reason, c.ICMP, want)
		}
	}
	for from := range out.ICMPFrom {
		if from != gateway4 && from != gateway6 {
			t.Errorf("ICMP errors came from %s (%v), want only the gateway addresses %s and %s", from, out.ICMPFrom, gateway4, gateway6)
		}
	}
	denied := metricDelta(before, after, "masque_tunnel_dropped_packets_total", `reason="destination_denied"`)
	icmp := metricDelta(before, after, "masque_tunnel_icmp_errors_sent_total")
	t.Logf("destination_denied drops +%v for %d denied probes; ICMP errors sent +%v for %d unicast ones", denied, deniedSent, icmp, unicastSent)
	if denied != float64(deniedSent) {
		t.Errorf("masque_tunnel_dropped_packets_total{reason=\"destination_denied\"} grew by %v, want %d (the denied probes sent)", denied, deniedSent)
	}
	if icmp != float64(unicastSent) {
		t.Errorf("masque_tunnel_icmp_errors_sent_total grew by %v, want %d (the unicast denied probes)", icmp, unicastSent)
	}
}

// pingErrorsRE finds ping(8)'s count of ICMP errors received ("+5 errors").
var pingErrorsRE = regexp.MustCompile(`\+(\d+) errors`)

// pingThrough is ping without a deadline (-w), which would make iputils
// ping stop at the first ICMP error: it sends all count echo requests,
// 0.2 s apart, and waits 1 s for the last answer.
func pingThrough(t *testing.T, ns, addr string, count int) (pr pingResult, errors int) {
	t.Helper()
	r := runIn(t, ns, 30*time.Second, "ping", "-n", "-c", strconv.Itoa(count), "-i", "0.2", "-W", "1", addr)
	pr.out = r.stdout + r.stderr
	if m := pingCountRE.FindStringSubmatch(r.stdout); m != nil {
		pr.sent, _ = strconv.Atoi(m[1])
		pr.received, _ = strconv.Atoi(m[2])
	}
	if m := pingErrorsRE.FindStringSubmatch(r.stdout); m != nil {
		errors, _ = strconv.Atoi(m[1])
	}
	return pr, errors
}

// adminProhibited matches ICMP and ICMPv6 destination unreachable,
// administratively prohibited (ICMPv4 type 3 code 13, ICMPv6 type 1 code 1),
// in tcpdump's syntax.
const adminProhibited = "(icmp and icmp[0] == 3 and icmp[1] == 13) or (icmp6 and ip6[40] == 1 and ip6[41] == 1)"

// TestClientToClient: a client cannot reach another client's address
// unless policy allows it, ICMP errors included. Client A sends UDP
// datagrams, pings and ICMP port unreachable errors (crafted on a raw
// socket, quoting a datagram from B to A) to client B's tunnel addresses,
// IPv4 and IPv6. By default none arrives at B (a UDP listener bound to B's
// address, tcpdump on B's TUN, ping's replies) and the server counts each
// as destination_denied; A gets ICMP administratively prohibited for every
// datagram and ping (tcpdump on A's TUN, ping's error count) but not for
// its ICMP errors, which are never answered with another (RFC 1812
// §4.3.2.7, RFC 4443 §2.4 (e)). With allow_client_to_client in the server's
// configuration, the same packets all arrive and none is refused: the test
// sees what it counts.
func TestClientToClient(t *testing.T) {
	for _, allow := range []bool{false, true} {
		name := "denied"
		if allow {
			name = "allowed"
		}
		t.Run(name, func(t *testing.T) { clientToClient(t, allow) })
	}
}

func clientToClient(t *testing.T, allow bool) {
	const n = 10 // UDP datagrams and pings per address family
	tp := newTopo(t, true)
	var extra []string
	if allow {
		extra = []string{"--config", serverConfig(t, "allow-client-to-client = true\n")}
	}
	srv := tp.startServer(t, extra...)
	a := tp.startClient(t, tp.client, tokenAuth("alice"))
	b := tp.startClient(t, tp.client2, tokenAuth("bob"))
	a4, a6, b4, b6 := a.up.addr4(), a.up.addr6(), b.up.addr4(), b.up.addr6()
	if !a6.IsValid() || !b6.IsValid() {
		t.Fatalf("clients need an IPv6 address each: A %v, B %v", a.up.addresses, b.up.addresses)
	}
	t.Logf("client A %v %v, client B %v %v", a4, a6, b4, b6)

	atB := map[netip.Addr]*atomic.Int64{
		b4: countUDP(t, tp.client2, netip.AddrPortFrom(b4, 9200).String()),
		b6: countUDP(t, tp.client2, netip.AddrPortFrom(b6, 9200).String()),
	}
	intoB := startCaptureOn(t, tp.client2, b.up.tun, "src host "+a4.String()+" or src host "+a6.String(), false)
	refusedA := startCaptureOn(t, tp.client, a.up.tun, adminProhibited, false)

	before := srv.metrics(t)
	sent := map[netip.Addr]int{}
	for _, dst := range []netip.Addr{b4, b6} {
		// An unconnected socket: ICMP errors are not reported to it, so
		// that no send fails because of the previous one's error.
		pc := listenUDPIn(t, tp.client, ":0")
		for i := range n {
			if _, err := pc.WriteToUDPAddrPort(fmt.Appendf(nil, "c2c|%d", i), netip.AddrPortFrom(dst, 9200)); err != nil {
				t.Errorf("send to %v: %v", dst, err)
				continue
			}
			sent[dst]++
			time.Sleep(5 * time.Millisecond)
		}
	}
	icmpErrs := 0
	for _, dst := range []netip.Addr{b4, b6} {
		icmpErrs += sendICMPErrors(t, tp.client, dst, n)
	}
	pings := map[netip.Addr]pingResult{}
	pingErrs := map[netip.Addr]int{}
	for _, dst := range []netip.Addr{b4, b6} {
		pings[dst], pingErrs[dst] = pingThrough(t, tp.client, dst.String(), n)
	}
	time.Sleep(300 * time.Millisecond) // the last packets land
	after := srv.metrics(t)
	intoB.stop(5 * time.Second)
	refusedA.stop(5 * time.Second)
	arrived := len(nonEmptyLines(intoB.stdout.String()))
	refused := len(nonEmptyLines(refusedA.stdout.String()))
	denied := metricDelta(before, after, "masque_tunnel_dropped_packets_total", `reason="destination_denied"`)
	icmp := metricDelta(before, after, "masque_tunnel_icmp_errors_sent_total")

	total := 0
	for _, dst := range []netip.Addr{b4, b6} {
		p, errs := pings[dst], pingErrs[dst]
		t.Logf("to B's %v: UDP sent %d, received by B's listener %d; pings sent %d, answered %d, ICMP errors %d", dst, sent[dst], atB[dst].Load(), p.sent, p.received, errs)
		total += sent[dst] + p.sent
		if sent[dst] != n || p.sent != n {
			t.Errorf("to %v: sent %d datagrams and %d pings, want %d each (else the test proves nothing)\n%s", dst, sent[dst], p.sent, n, p.out)
		}
		wantUDP, wantReplies, wantErrs := int64(0), 0, p.sent
		if allow {
			wantUDP, wantReplies, wantErrs = int64(sent[dst]), p.sent, 0
		}
		if got := atB[dst].Load(); got != wantUDP {
			t.Errorf("B's listener on %v received %d of A's %d datagrams, want %d", dst, got, sent[dst], wantUDP)
		}
		if p.received != wantReplies || errs != wantErrs {
			t.Errorf("ping %v from A: %d of %d answered, %d ICMP errors; want %d answered, %d errors\n%s", dst, p.received, p.sent, errs, wantReplies, wantErrs, p.out)
		}
	}
	if icmpErrs != 2*n {
		t.Errorf("A sent %d ICMP errors to B, want %d (else the test proves nothing)", icmpErrs, 2*n)
	}
	t.Logf("A sent %d datagrams and pings and %d ICMP errors to B; packets from A on B's TUN: %d; ICMP administratively prohibited on A's TUN: %d; server: destination_denied +%v, ICMP errors sent +%v", total, icmpErrs, arrived, refused, denied, icmp)
	wantArrived, wantDenied, wantRefused := 0, total+icmpErrs, total
	if allow {
		wantArrived, wantDenied, wantRefused = total+icmpErrs, 0, 0
	}
	if arrived != wantArrived {
		t.Errorf("%d packets from A appeared on B's TUN, want %d", arrived, wantArrived)
	}
	if refused != wantRefused {
		t.Errorf("A received %d ICMP administratively prohibited errors, want %d", refused, wantRefused)
	}
	if denied != float64(wantDenied) || icmp != float64(wantRefused) {
		t.Errorf("server: destination_denied grew by %v and ICMP errors sent by %v, want %d and %d", denied, icmp, wantDenied, wantRefused)
	}
}

// sendICMPErrors sends count ICMP (ICMPv6) port unreachable errors from ns
// to dst on a raw socket, each quoting a UDP datagram from dst:9200 to
// 198.18.9.9:40000 (2001:db8:9::9), and returns how many the kernel took.
func sendICMPErrors(t *testing.T, ns string, dst netip.Addr, count int) int {
	t.Helper()
	network, laddr := "ip4:icmp", "0.0.0.0"
	if dst.Is6() {
		network, laddr = "ip6:ipv6-icmp", "::"
	}
	var pc net.PacketConn
	if err := inNetns(ns, func() error {
		var err error
		pc, err = net.ListenPacket(network, laddr)
		return err
	}); err != nil {
		t.Fatalf("raw socket %s in %s: %v", network, ns, err)
	}
	defer pc.Close()
	msg := icmpPortUnreachable(dst)
	sent := 0
	for range count {
		if _, err := pc.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			t.Errorf("send ICMP error to %v: %v", dst, err)
			continue
		}
		sent++
		time.Sleep(5 * time.Millisecond)
	}
	return sent
}

// icmpPortUnreachable returns an ICMP (type 3 code 3) or ICMPv6 (type 1
// code 4) port unreachable message quoting a UDP datagram from quotedSrc
// to a documentation address. The kernel computes the ICMPv6 checksum of a
// raw socket; the ICMP checksum is computed here.
func icmpPortUnreachable(quotedSrc netip.Addr) []byte {
	udp := []byte{0x23, 0xf0, 0x9c, 0x40, 0, 8, 0, 0} // 9200 → 40000, length 8, no checksum
	if quotedSrc.Is6() {
		ip := make([]byte, 40)
		ip[0], ip[5], ip[6], ip[7] = 0x60, 8, 17, 64
		s, d := quotedSrc.As16(), netip.MustParseAddr("2001:db8:9::9").As16()
		copy(ip[8:], s[:])
		copy(ip[24:], d[:])
		return append(append([]byte{1, 4, 0, 0, 0, 0, 0, 0}, ip...), udp...)
	}
	ip := []byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0}
	s, d := quotedSrc.As4(), netip.MustParseAddr("198.18.9.9").As4()
	ip = append(append(ip, s[:]...), d[:]...)
	m := append(append([]byte{3, 3, 0, 0, 0, 0, 0, 0}, ip...), udp...)
	var sum uint32
	for i := 0; i+1 < len(m); i += 2 {
		sum += uint32(m[i])<<8 | uint32(m[i+1])
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	m[2], m[3] = byte(^sum>>8), byte(^sum)
	return m
}

// cpuTime returns the CPU time (user + system) that process pid has used,
// from /proc/PID/stat, in the kernel's USER_HZ ticks of 10 ms.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name, field 2, is in parentheses and may hold spaces;
	// utime and stime are fields 14 and 15.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		t.Fatalf("/proc/%d/stat: too few fields: %q", pid, s)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: bad utime %q or stime %q", pid, f[11], f[12])
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// TestRoutingLoop: a packet for an address of the client pool that no
// session holds does not loop. With allow_client_to_client (so that
// policy lets it pass), a client sends a burst of 10,000 datagrams in 2 s
// to unassigned addresses of both pools; the server's kernel routes them
// back into the TUN (tcpdump sees them leave the kernel there), masqued
// finds no session for them and drops each one once, counted as
// no_session: the count is at most the number sent (plus the kernel's own
// multicast into the TUN), where a loop would count each packet again on
// every pass until its TTL (hop limit) ran out, and ICMP Time Exceeded
// would come back (none does). masqued then goes quiet: in the 3 s after
// the burst it uses less than 0.1 s of CPU, so nothing spins.
//
// The loop cannot form because masqued hands a session only packets for
// that session's own address and takes from it only packets from that
// address; a masqued that wrote packets without a session back into its
// TUN fails every count here.
func TestRoutingLoop(t *testing.T) {
	const (
		n     = 5000 // datagrams per destination
		quiet = 3 * time.Second
	)
	unassigned := []string{"100.64.0.200", "fd6d:6173:7175:6500::200"}
	tp := newTopo(t, false)
	srv := tp.startServer(t, "--config", serverConfig(t, "allow-client-to-client = true\n"))
	pid := srv.cmd.Process.Pid
	// What the kernel sends into the TUN toward the unassigned addresses,
	// i.e. what masqued reads back.
	// masqued writes GRO-coalesced datagrams into the TUN and the kernel
	// routes them back as GSO packets, so this counts fewer packets than
	// datagrams.
	back := startCaptureOn(t, tp.server, serverTUN, "dst host "+unassigned[0]+" or dst host "+unassigned[1], true)
	// The kernel's own packets into the TUN that no session owns either
	// (IPv6 multicast listener reports after the TUN came up).
	kernel := startCaptureOn(t, tp.server, serverTUN, "ip multicast or ip6 multicast", true)

	before := srv.metrics(t)
	cpu0 := cpuTime(t, pid)
	start := time.Now()
	out := runProbes(t, tp, "-probe", strings.Join(unassigned, ","), "-kinds", "udp", "-n", strconv.Itoa(n), "-pps", strconv.Itoa(n), "-wait", "500ms")
	burst := time.Since(start)
	cpu1 := cpuTime(t, pid)
	mid := srv.metrics(t)
	time.Sleep(quiet)
	cpu2 := cpuTime(t, pid)
	after := srv.metrics(t)
	back.stop(5 * time.Second)
	kernel.stop(5 * time.Second)
	backLines := len(nonEmptyLines(back.stdout.String()))
	kernelLines := len(nonEmptyLines(kernel.stdout.String()))

	sent := 0
	for _, a := range unassigned {
		c := out.Probes[a]
		if c == nil {
			t.Fatalf("spoofclient reported nothing for %s", a)
		}
		t.Logf("to %s: sent %v, ICMP errors back %v, replies %v", a, c.Sent, c.ICMP, c.Replies)
		if c.Sent["udp"] != n {
			t.Errorf("%s: spoofclient put %d datagrams into the tunnel, want %d", a, c.Sent["udp"], n)
		}
		sent += c.Sent["udp"]
		// ICMP Time Exceeded: a packet that looped until its TTL (hop
		// limit) ran out.
		te := c.ICMP["11/0"]
		if strings.Contains(a, ":") {
			te = c.ICMP["3/0"]
		}
		if te != 0 {
			t.Errorf("%s: %d ICMP Time Exceeded came back, want 0 (the packets looped)", a, te)
		}
	}
	noSession := metricDelta(before, after, "masque_tunnel_dropped_packets_total", `reason="no_session"`)
	noSessionQuiet := metricDelta(mid, after, "masque_tunnel_dropped_packets_total", `reason="no_session"`)
	denied := metricDelta(before, after, "masque_tunnel_dropped_packets_total", `reason="destination_denied"`)
	t.Logf("burst: %d datagrams in %v (with the 0.5 s wait); routed back into the TUN by the kernel: %d packets; kernel's own multicast into the TUN: %d; no_session drops +%v (+%v after the burst); destination_denied +%v; other packets to the client (IPv6 redirects): %d",
		sent, burst.Round(time.Millisecond), backLines, kernelLines, noSession, noSessionQuiet, denied, out.Other)
	t.Logf("masqued CPU: %v during the burst, %v in the %v after it", cpu1-cpu0, cpu2-cpu1, quiet)

	if hi := sent + kernelLines; noSession > float64(hi) || noSession < 0.95*float64(sent) {
		t.Errorf("no_session drops grew by %v for %d datagrams sent and %d multicast packets of the kernel's, want each dropped once (between %d and %d)", noSession, sent, kernelLines, int(0.95*float64(sent)), hi)
	}
	if denied != 0 {
		t.Errorf("destination_denied grew by %v, want 0 (allow_client_to_client lets the datagrams reach the kernel)", denied)
	}
	if backLines == 0 || backLines > sent {
		t.Errorf("the kernel routed %d packets back into the TUN, want between 1 and %d (each datagram once at most)", backLines, sent)
	}
	if used := cpu2 - cpu1; used >= 100*time.Millisecond {
		t.Errorf("masqued used %v of CPU in the %v after the burst, want < 100ms: something spins", used, quiet)
	}
}

// TestAddedServerAddress: an address the server gains while masqued runs
// is refused like those it had at start. masqued follows the host's
// addresses (netlink) and rebuilds its policy; probes to the new
// addresses get 0 listener hits and ICMP administratively prohibited.
func TestAddedServerAddress(t *testing.T) {
	const n = 5
	tp := newTopo(t, false)
	srv := tp.startServer(t)
	added := []string{"198.18.2.3", "2001:db8:2::3"}
	for i, a := range added {
		bits := []string{"/24", "/64"}[i]
		mustRun(t, "ip", "-n", tp.server, "addr", "add", a+bits, "dev", egressIf, "nodad")
		t.Cleanup(func() { exec.Command("ip", "-n", tp.server, "addr", "del", a+bits, "dev", egressIf).Run() })
	}
	waitUntil(t, "masqued to rebuild its policy", 5*time.Second, func() bool {
		return strings.Contains(srv.stderr.String(), "host addresses changed: policy rebuilt")
	})
	udp, tcp := map[string]*atomic.Int64{}, map[string]*atomic.Int64{}
	for _, a := range added {
		udp[a] = countUDP(t, tp.server, net.JoinHostPort(a, "9200"))
		tcp[a] = countAccepts(t, tp.server, net.JoinHostPort(a, "9201"))
	}
	out := runProbes(t, tp, "-probe", strings.Join(added, ","), "-kinds", "udp,tcp,echo", "-n", strconv.Itoa(n), "-pps", "500", "-wait", "1s")
	for _, a := range added {
		c := out.Probes[netip.MustParseAddr(a).String()]
		if c == nil {
			t.Fatalf("spoofclient reported nothing for %s", a)
		}
		code := "3/13"
		if netip.MustParseAddr(a).Is6() {
			code = "1/1"
		}
		t.Logf("%s (added after start): sent %v, ICMP %v, replies %v, UDP listener hits %d, TCP accepts %d", a, c.Sent, c.ICMP, c.Replies, udp[a].Load(), tcp[a].Load())
		if sum(c.Sent) != 3*n {
			t.Errorf("%s: %d probes sent, want %d", a, sum(c.Sent), 3*n)
		}
		if udp[a].Load() != 0 || tcp[a].Load() != 0 || sum(c.Replies) != 0 {
			t.Errorf("%s: %d UDP hits, %d TCP accepts, %d replies; want 0", a, udp[a].Load(), tcp[a].Load(), sum(c.Replies))
		}
		if c.ICMP[code] != 3*n {
			t.Errorf("%s: ICMP errors %v, want %d of %s", a, c.ICMP, 3*n, code)
		}
	}
}
