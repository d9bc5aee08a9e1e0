package e2e

import (
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// natQUIC puts a source NAT on the client namespace's way out: the
// tunnel's QUIC flow leaves c0 from clientIP4 and a port of ports (nft
// syntax: "40000", or "40000-40999 random"), as it would behind a NAT
// router; the server sees that port. Called again, it changes the mapping
// for new conntrack entries; flushQUICFlows makes the flow take it. The
// test's cleanup deletes the table.
func natQUIC(t *testing.T, ns, ports string) {
	t.Helper()
	// One nft run is one transaction: no packet meets the chain flushed
	// and leaves without NAT.
	script := strings.Join([]string{
		"add table ip e2e_nat",
		"add chain ip e2e_nat post { type nat hook postrouting priority 100 ; }",
		"flush chain ip e2e_nat post",
		"add rule ip e2e_nat post ip daddr " + serverIP4 + " udp dport 4433 counter snat to " + clientIP4 + ":" + ports,
	}, " ; ")
	if r := runIn(t, ns, 10*time.Second, append([]string{"nft"}, strings.Fields(script)...)...); r.code != 0 {
		t.Fatalf("nft %s: %s", script, r.stderr)
	}
	t.Cleanup(func() { runIn(t, ns, 10*time.Second, "nft", "delete", "table", "ip", "e2e_nat") })
}

// conntrackIn returns a netlink handle in ns; the caller closes it.
func conntrackIn(t *testing.T, ns string) *netlink.Handle {
	t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatalf("netns %s: %v", ns, err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h, unix.NETLINK_NETFILTER)
	if err != nil {
		t.Fatalf("netlink in %s: %v", ns, err)
	}
	return nh
}

// quicFlows returns ns's conntrack entries of UDP to the server's port
// 4433. An entry's Reverse.DstPort is the port the NAT mapped it to.
func quicFlows(t *testing.T, ns string) []*netlink.ConntrackFlow {
	t.Helper()
	nh := conntrackIn(t, ns)
	defer nh.Close()
	flows, err := nh.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	if err != nil {
		t.Fatalf("conntrack list in %s: %v", ns, err)
	}
	var out []*netlink.ConntrackFlow
	for _, f := range flows {
		if f.Forward.Protocol == unix.IPPROTO_UDP && f.Forward.DstPort == 4433 && f.Forward.DstIP.Equal(net.ParseIP(serverIP4)) {
			out = append(out, f)
		}
	}
	return out
}

// mappedPort returns the external port of the one QUIC flow in ns's
// conntrack table, failing t unless there is exactly one.
func mappedPort(t *testing.T, ns string) uint16 {
	t.Helper()
	flows := quicFlows(t, ns)
	if len(flows) != 1 {
		t.Fatalf("%d conntrack entries of the QUIC flow in %s, want 1: %v", len(flows), ns, flows)
	}
	return flows[0].Reverse.DstPort
}

// flushQUICFlows deletes ns's conntrack entries of UDP to port 4433, as a
// NAT router that reboots or runs out of state does, and returns how many
// it deleted.
func flushQUICFlows(t *testing.T, ns string) uint {
	t.Helper()
	nh := conntrackIn(t, ns)
	defer nh.Close()
	f := &netlink.ConntrackFilter{}
	if err := f.AddProtocol(unix.IPPROTO_UDP); err != nil {
		t.Fatal(err)
	}
	if err := f.AddPort(netlink.ConntrackOrigDstPort, 4433); err != nil {
		t.Fatal(err)
	}
	n, err := nh.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f)
	if err != nil {
		t.Fatalf("conntrack delete in %s: %v", ns, err)
	}
	return n
}

// quicPortsSeen counts a capture's QUIC packets between the client and
// the server by the client's port and direction: "40000>" is from the
// client's port 40000, ">40000" to it.
func quicPortsSeen(lines []string) map[string]int {
	re := regexp.MustCompile(`IP ([\d.]+)\.(\d+) > ([\d.]+)\.(\d+):`)
	n := map[string]int{}
	for _, l := range lines {
		m := re.FindStringSubmatch(l)
		switch {
		case m == nil:
			n["other"]++
		case m[1] == clientIP4:
			n[m[2]+">"]++
		default:
			n[">"+m[4]]++
		}
	}
	return n
}

func portsString(n map[string]int) string {
	var keys []string
	for k := range n {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, n[k]))
	}
	return strings.Join(parts, ", ")
}

// TestNATRebinding: the NAT in front of the client maps its QUIC socket to
// port 40000, then, in the middle of a TCP transfer, forgets the mapping
// and maps the flow to port 40001 (a NAT rebinding: same client socket,
// new source port at the server). The server sees the new port and
// follows it: same session, no reconnect, traffic stalls at most a second,
// the transfer arrives intact.
func TestNATRebinding(t *testing.T) {
	tp := newTopo(t, false)
	srv := tp.startServer(t)
	natQUIC(t, tp.client, "40000")
	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	checkPing(t, tp.client, 2)
	if p := mappedPort(t, tp.client); p != 40000 {
		t.Fatalf("the NAT mapped the QUIC flow to port %d, want 40000", p)
	}
	// What the server receives and sends, on its side of the link.
	dump := startCaptureOn(t, tp.server, "s0", "udp and host "+clientIP4+" and port 4433", false)

	// 16 MB at 2 MB/s takes 8 s; the rebinding comes 2 s in.
	x := startTransfer(t, tp, tp.client, 9100, 16<<20, 2<<20, false, 50*time.Second)
	pinged := startPingGaps(t, tp.client, targetIP4, 6*time.Second)
	time.Sleep(2 * time.Second)
	natQUIC(t, tp.client, "40001")
	if n := flushQUICFlows(t, tp.client); n != 1 {
		t.Errorf("flushed %d conntrack entries of the QUIC flow, want 1", n)
	}

	checkPathFollowed(t, "the NAT rebinding 40000 → 40001", pinged, x, c, srv)
	if p := mappedPort(t, tp.client); p != 40001 {
		t.Errorf("after the rebinding the NAT maps the QUIC flow to port %d, want 40001", p)
	}
	seen := quicPortsSeen(stopCapture(dump))
	t.Logf("QUIC packets at the server by client port (from>, >to): %s", portsString(seen))
	for _, k := range []string{"40000>", ">40000", "40001>", ">40001"} {
		if seen[k] == 0 {
			t.Errorf("the server's capture has no packet %s, want some: %s", k, portsString(seen))
		}
	}
	for k, n := range seen {
		if !slices.Contains([]string{"40000>", ">40000", "40001>", ">40001"}, k) {
			t.Errorf("the server's capture has %d packets %s, want none but to and from 40000 and 40001", n, k)
		}
	}
}

// TestNATKeepAlive: behind a NAT that forgets an idle UDP mapping after
// 20 s (and would pick a new random port for the next packet), a tunnel
// left idle for 45 s keeps its mapping: the client's keep-alives (every
// 10 s) refresh it. The conntrack entry never goes away, the server sees
// only the one port, and a ping works at once afterwards, with no
// reconnect.
func TestNATKeepAlive(t *testing.T) {
	tp := newTopo(t, false)
	srv := tp.startServer(t)
	natQUIC(t, tp.client, "40000-40999 random")
	const natTimeout = 20 * time.Second
	sysctl(t, tp.client, "net.netfilter.nf_conntrack_udp_timeout=20", "net.netfilter.nf_conntrack_udp_timeout_stream=20")
	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	checkPing(t, tp.client, 2)
	port := mappedPort(t, tp.client)
	dump := startCaptureOn(t, tp.server, "s0", "udp and src host "+clientIP4+" and dst port 4433", false)
	before := c.status(t)

	// Idle for 45 s, looking at the NAT's state every second.
	const idle = 45 * time.Second
	start := time.Now()
	var missing, moved, polls int
	minLeft := uint32(1 << 31)
	last := fmt.Sprint(port)
	for polls = 0; polls < 60 && time.Since(start) < idle; polls++ {
		time.Sleep(time.Second)
		flows := quicFlows(t, tp.client)
		var now []string
		for _, f := range flows {
			now = append(now, fmt.Sprint(f.Reverse.DstPort))
		}
		if s := strings.Join(now, ","); s != last {
			t.Logf("after %v the QUIC flow is mapped to port(s) [%s]", time.Since(start).Round(time.Second), s)
			last = s
		}
		switch {
		case len(flows) == 0:
			missing++
		case len(flows) > 1 || flows[0].Reverse.DstPort != port:
			moved++
		default:
			minLeft = min(minLeft, flows[0].TimeOut)
		}
	}
	end := time.Now()
	after := c.status(t)
	lines := stopCapture(dump)
	sent := captureTimes(t, lines, time.Now())
	silence := longestSilence(sent, start, end)
	t.Logf("idle %v behind a NAT with a %v UDP timeout: %d packets to the server, longest silence %v; mapping to port %d seen in %d of %d polls (missing %d, moved %d), least time left %d s; tunnel tx %d packets while idle",
		end.Sub(start).Round(time.Second), natTimeout, len(sent), silence.Round(time.Millisecond), port, polls-missing-moved, polls, missing, moved, minLeft, after.TxPackets-before.TxPackets)
	if missing > 0 || moved > 0 {
		t.Errorf("the NAT mapping to port %d did not survive: missing in %d polls, moved in %d", port, missing, moved)
	}
	if seen := quicPortsSeen(lines); len(seen) != 1 || seen[strconv.Itoa(int(port))+">"] == 0 {
		t.Errorf("the server saw the client's QUIC flow from %s, want only port %d", portsString(seen), port)
	}
	if silence >= natTimeout {
		t.Errorf("the client sent nothing to the server for %v, longer than the NAT's %v timeout", silence.Round(time.Millisecond), natTimeout)
	}
	if r := ping(t, tp.client, targetIP4, 1); r.received != 1 {
		t.Errorf("ping after 45 s idle: not answered\n%s", r.out)
	}
	if p := mappedPort(t, tp.client); p != port {
		t.Errorf("after the idle period the NAT maps the flow to port %d, want %d as before", p, port)
	}
	if st := c.status(t); st.Reconnects != 0 || st.State != "up" {
		t.Errorf("after 45 s idle: state %q, %d reconnects; want up, 0", st.State, st.Reconnects)
	}
	if n := srv.sessions(t); n != 1 {
		t.Errorf("masqued has %v sessions, want 1", n)
	}
}
