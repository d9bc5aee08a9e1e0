package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// CONNECT-UDP end to end: masque udp in the client namespace, masqued in the
// server namespace, UDP services in the target namespace (opened by the
// test process itself).

const udpEchoPort = "7000"

// udpPayload is datagram seq with size bytes. Every byte depends on seq, so
// a stale or foreign echo of the same size never matches.
func udpPayload(seq, size int) []byte {
	b := make([]byte, size)
	x := uint32(seq)*2654435761 + uint32(size)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// udpStride is a step through the sizes 1..max that is coprime to max:
// consecutive datagrams then differ in size (echoes are matched by size)
// and max of them cover every size.
func udpStride(max int) int {
	gcd := func(a, b int) int {
		for b != 0 {
			a, b = b, a%b
		}
		return a
	}
	s := 7919 % max
	for s <= 1 || gcd(s, max) != 1 {
		s++
	}
	return s
}

// echoResult is the outcome of echoRun.
type echoResult struct {
	sent, received int
	corrupt        int // an echo of the right size with other bytes
	foreign        int // an echo nobody waits for (late, duplicated)
	stalls         int // times the window did not open within a second
	elapsed        time.Duration
}

func (r echoResult) lost() int { return r.sent - r.received }

// echoRun sends n datagrams of sizes 1..max over c to an echo server,
// keeping at most window unanswered, and checks every echo byte for byte.
// A window that does not open within a second counts as a stall: its
// datagrams count as lost and sending goes on. It stops sending after
// limit.
func echoRun(c *net.UDPConn, n, max, window int, limit time.Duration) echoResult {
	var (
		mu          sync.Mutex
		outstanding = map[int]int{} // size → seq
		res         echoResult
	)
	tokens := make(chan struct{}, window)
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 65536)
		for {
			m, err := c.Read(b)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			mu.Lock()
			seq, ok := outstanding[m]
			switch {
			case !ok:
				res.foreign++
			case !bytes.Equal(b[:m], udpPayload(seq, m)):
				res.corrupt++
			default:
				delete(outstanding, m)
				res.received++
				<-tokens
			}
			mu.Unlock()
		}
	}()
	stride := udpStride(max)
	start := time.Now()
	for seq := 0; seq < n && time.Since(start) < limit; seq++ {
		select {
		case tokens <- struct{}{}:
		case <-time.After(time.Second):
			// Give up on what is outstanding and carry on.
			mu.Lock()
			res.stalls++
			for k := range outstanding {
				delete(outstanding, k)
				<-tokens
			}
			mu.Unlock()
			tokens <- struct{}{}
		}
		size := 1 + (seq*stride)%max
		p := udpPayload(seq, size)
		mu.Lock()
		outstanding[size] = seq
		res.sent++
		mu.Unlock()
		if _, err := c.Write(p); err != nil {
			mu.Lock()
			delete(outstanding, size)
			mu.Unlock()
			<-tokens
		}
	}
	// Wait for the last echoes.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		left := len(outstanding)
		mu.Unlock()
		if left == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	res.elapsed = time.Since(start)
	c.SetReadDeadline(time.Now())
	<-done
	c.SetReadDeadline(time.Time{})
	return res
}

// exchangeOnce sends p and reports whether its echo comes back within d,
// skipping other datagrams.
func exchangeOnce(c *net.UDPConn, p []byte, d time.Duration) bool {
	if _, err := c.Write(p); err != nil {
		return false
	}
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	b := make([]byte, 65536)
	for {
		n, err := c.Read(b)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return false
			}
			continue
		}
		if bytes.Equal(b[:n], p) {
			return true
		}
	}
}

// probeMaxPayload finds the largest UDP payload that goes through f and
// back: it sends a datagram too large for any QUIC path (the forwarder
// drops it, counts it and learns the budget), then checks that an echo of
// the budget's size returns. Both ends discover the path MTU on their own,
// so it retries until they agree.
func probeMaxPayload(t *testing.T, c *net.UDPConn, f *udpFwd) int {
	t.Helper()
	for attempt := range 40 {
		before := f.status(t).Drops["too_big"]
		if _, err := c.Write(make([]byte, 1600)); err != nil {
			t.Fatal(err)
		}
		var st udpStatus
		waitUntil(t, "the forwarder to drop and count a 1600-byte datagram", 5*time.Second, func() bool {
			st = f.status(t)
			return st.Drops["too_big"] == before+1
		})
		max := st.UDP.MaxPayload
		if max < 1000 || max > 1452 {
			t.Fatalf("forwarder status max_payload = %d after a too-big datagram, want a QUIC datagram budget", max)
		}
		if exchangeOnce(c, udpPayload(-1-attempt, max), 500*time.Millisecond) {
			return max
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatal("no payload size echoes through the forwarder at its own budget after 40 tries")
	return 0
}

// TestUDPEcho10k: 10,000 datagrams of every size from 1 to the largest that
// fits go from a local peer through masque udp and masqued to an echo
// server in the target namespace and back, each checked byte for byte, with
// no loss; datagrams too large for the path are dropped and counted at both
// ends.
func TestUDPEcho10k(t *testing.T) {
	const n = 10000
	tp := newTopo(t, false)
	srv := tp.startServer(t)
	// The echo server answers "big" with 3000 bytes: too large for QUIC on
	// the way back.
	serveUDP(t, tp.target, targetIP4+":"+udpEchoPort, func(b []byte, from netip.AddrPort) []byte {
		if string(b) == "big" {
			return bytes.Repeat([]byte{'B'}, 3000)
		}
		return b
	})
	f := startUDPForwarder(t, tp.client, serverAddr, 1, append(tokenAuth("alice"),
		"--listen", "127.0.0.1:0", "--target", targetIP4+":"+udpEchoPort)...)
	c := dialUDPIn(t, tp.client, f.listens[0])

	// Warm up (path MTU discovery at both ends), then find the largest
	// payload that fits.
	for i := range 50 {
		exchangeOnce(c, udpPayload(100000+i, 1200), time.Second)
	}
	max := probeMaxPayload(t, c, f)
	before := srv.metrics(t)

	res := echoRun(c, n, max, 16, 60*time.Second)
	t.Logf("udp echo through masque udp: %d datagrams of 1-%d bytes, %d echoed intact, %d lost, %d corrupt, %d foreign, %d stalls, %.2f s: %.0f datagrams/s each way (window 16)",
		res.sent, max, res.received, res.lost(), res.corrupt, res.foreign, res.stalls, res.elapsed.Seconds(), float64(res.received)/res.elapsed.Seconds())
	if res.sent != n || res.received != n || res.corrupt != 0 || res.foreign != 0 {
		t.Errorf("echo: sent %d, echoed intact %d, corrupt %d, foreign %d; want all %d intact and nothing else", res.sent, res.received, res.corrupt, res.foreign, n)
	}

	// The server counts a datagram just after handing it on: let the last
	// ones land.
	var after string
	waitUntil(t, "the server's counters to settle", 5*time.Second, func() bool {
		after = srv.metrics(t)
		return metricOr0(after, "masque_udp_datagrams_total", `direction="down"`)-metricOr0(before, "masque_udp_datagrams_total", `direction="down"`) >= n
	})
	delta := func(name string, labels ...string) float64 {
		return metricOr0(after, name, labels...) - metricOr0(before, name, labels...)
	}
	if up, down := delta("masque_udp_datagrams_total", `direction="up"`), delta("masque_udp_datagrams_total", `direction="down"`); up != n || down != n {
		t.Errorf("server carried %v datagrams up and %v down during the run, want %d each", up, down, n)
	}
	if d := delta("masque_udp_dropped_datagrams_total", `reason="too_big"`); d != 0 {
		t.Errorf("server dropped %v datagrams as too big during the run, want 0", d)
	}
	wantBytes := float64(0)
	stride := udpStride(max)
	for seq := range n {
		wantBytes += float64(1 + (seq*stride)%max)
	}
	if b := delta("masque_udp_bytes_total", `direction="up"`); b != wantBytes {
		t.Errorf("server carried %v bytes up, want %v", b, wantBytes)
	}
	if v := metricOr0(after, "masque_udp_flows"); v != 1 {
		t.Errorf("masque_udp_flows = %v, want 1", v)
	}

	// One byte more than fits is dropped and counted, and nothing of it
	// arrives; the flow goes on.
	st := f.status(t)
	if exchangeOnce(c, udpPayload(7, max+1), 500*time.Millisecond) {
		t.Errorf("a %d-byte datagram (budget %d) came back", max+1, max)
	}
	if got := f.status(t).Drops["too_big"]; got != st.Drops["too_big"]+1 {
		t.Errorf("forwarder too_big drops = %d after one more oversized datagram, want %d", got, st.Drops["too_big"]+1)
	}
	// The target's 3000-byte answer is dropped and counted at the server.
	tooBig := metricOr0(srv.metrics(t), "masque_udp_dropped_datagrams_total", `reason="too_big"`)
	if exchangeOnce(c, []byte("big"), 500*time.Millisecond) {
		t.Error("the target's 3000-byte answer arrived")
	}
	waitUntil(t, "the server to count the 3000-byte answer as too big", 5*time.Second, func() bool {
		return metricOr0(srv.metrics(t), "masque_udp_dropped_datagrams_total", `reason="too_big"`) == tooBig+1
	})
	if !exchangeOnce(c, []byte("still here"), 2*time.Second) {
		t.Error("the flow stopped working after the oversized datagrams")
	}
	st = f.status(t)
	if st.State != "forwarding" || st.UDP.Flows != 1 || st.TxPackets < n || st.RxPackets < n {
		t.Errorf("forwarder status = %+v, want forwarding, 1 flow, ≥ %d datagrams each way", st, n)
	}
}

// refusalCase is a target that masqued must refuse: masque udp checks it at
// start and exits 1 with one line naming the status and Proxy-Status.
type refusalCase struct {
	target string
	want   []string // substrings of the error line
}

func checkRefusals(t *testing.T, tp *topo, auth []string, cases []refusalCase) {
	t.Helper()
	for _, rc := range cases {
		argv := append([]string{env.masque, "udp", "--server", serverAddr, "--ca", env.certDir + "/ca.crt",
			"--state-dir", t.TempDir(), "--log-level", "error", "--listen", "127.0.0.1:0", "--target", rc.target}, auth...)
		r := runIn(t, tp.client, 20*time.Second, argv...)
		if r.code != 1 {
			t.Errorf("masque udp --target %s: exit %d, want 1\nstdout: %s\nstderr: %s", rc.target, r.code, r.stdout, r.stderr)
			continue
		}
		checkErrorLine(t, "masque udp --target "+rc.target, r.stderr, "masque: ")
		for _, w := range rc.want {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("masque udp --target %s: error %q lacks %q", rc.target, strings.TrimSpace(r.stderr), w)
			}
		}
	}
}

// TestUDPPolicy: the server resolves target names itself (with a timeout)
// and decides on the resolved address: loopback, the metadata service and
// its own addresses are refused with destination_ip_prohibited, a name
// that does not resolve with dns_error, a resolver that does not answer
// with dns_timeout. DNS goes through the forwarder to a resolver in the
// target namespace (README's example); a name target and an IPv6 target
// (from an IPv6 local listener) work.
func TestUDPPolicy(t *testing.T) {
	tp := newTopo(t, false)
	serveDNS(t, tp.target, targetIP4+":53", map[string]netip.Addr{
		"echo.test.":  netip.MustParseAddr(targetIP4),
		"loop.test.":  netip.MustParseAddr("127.0.0.53"),
		"meta.test.":  netip.MustParseAddr("169.254.169.254"),
		"self.test.":  netip.MustParseAddr(egressIP4),
		"bcast.test.": netip.MustParseAddr("255.255.255.255"),
	}, "slow.test.")
	resolvConf(t, tp.server, targetIP4)
	srv := tp.startServer(t, "--udp-resolve-timeout", "1s")
	serveUDP(t, tp.target, targetIP4+":"+udpEchoPort, echo)
	serveUDP(t, tp.target, "["+targetIP6+"]:"+udpEchoPort, echo)

	checkRefusals(t, tp, tokenAuth("alice"), []refusalCase{
		{"127.0.0.2:7", []string{"403", "destination_ip_prohibited", `details="loopback"`}},
		{"[::1]:7", []string{"403", "destination_ip_prohibited", `details="loopback"`}},
		{serverIP4 + ":4433", []string{"403", "destination_ip_prohibited", `details="server_address"`}},
		{egressIP4 + ":53", []string{"403", "destination_ip_prohibited", `details="server_address"`}},
		{"169.254.169.254:80", []string{"403", "destination_ip_prohibited", `details="metadata"`}},
		{"224.0.0.251:5353", []string{"403", `details="multicast"`}},
		{"loop.test:7", []string{"403", "destination_ip_prohibited", `details="loopback"`}},
		{"meta.test:80", []string{"403", `details="metadata"`}},
		{"self.test:53", []string{"403", `details="server_address"`}},
		{"bcast.test:67", []string{"403", `details="multicast"`}},
		{"nx.test:7", []string{"502", "error=dns_error", `rcode="NXDOMAIN"`}},
		{"slow.test:7", []string{"504", "error=dns_timeout"}},
	})
	checkRefusals(t, tp, tokenAuth("wrong"), []refusalCase{
		{targetIP4 + ":" + udpEchoPort, []string{"401", "--token-file"}},
	})
	checkRefusals(t, tp, nil, []refusalCase{
		{targetIP4 + ":" + udpEchoPort, []string{"401"}},
	})
	m := srv.metrics(t)
	for _, c := range []struct {
		labels []string
		want   float64
	}{
		{[]string{"masque_udp_refused_requests_total", `reason="destination_denied"`}, 10},
		{[]string{"masque_udp_refused_requests_total", `reason="dns_error"`}, 1},
		{[]string{"masque_udp_refused_requests_total", `reason="dns_timeout"`}, 1},
		{[]string{"masque_udp_refused_requests_total", `reason="unauthenticated"`}, 2},
		{[]string{"masque_udp_denied_destinations_total", `reason="loopback"`}, 3},
		{[]string{"masque_udp_denied_destinations_total", `reason="metadata"`}, 2},
		{[]string{"masque_udp_denied_destinations_total", `reason="server_address"`}, 3},
	} {
		if got := metricOr0(m, c.labels[0], c.labels[1:]...); got != c.want {
			t.Errorf("%s{%s} = %v, want %v", c.labels[0], strings.Join(c.labels[1:], ","), got, c.want)
		}
	}

	// README: DNS through the forwarder to the resolver in the target
	// namespace; and a name target that the server resolves.
	f := startUDPForwarder(t, tp.client, serverAddr, 3, append(tokenAuth("alice"),
		"--forward", "127.0.0.1:0="+targetIP4+":53",
		"--forward", "127.0.0.1:0=echo.test:"+udpEchoPort,
		"--forward", "[::1]:0=["+targetIP6+"]:"+udpEchoPort)...)
	dns := dialUDPIn(t, tp.client, f.listens[0])
	q := dnsQuery(t, 4242, "echo.test.")
	dns.Write(q)
	dns.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 1500)
	n, err := dns.Read(b)
	if err != nil {
		t.Fatalf("no DNS answer through the forwarder: %v", err)
	}
	id, rcode, addrs, err := dnsAnswerA(b[:n])
	if err != nil || id != 4242 || rcode != dnsmessage.RCodeSuccess || len(addrs) != 1 || addrs[0] != netip.MustParseAddr(targetIP4) {
		t.Errorf("DNS answer through the forwarder: id %d rcode %v A %v err %v; want 4242, success, %s", id, rcode, addrs, err, targetIP4)
	}
	byName := dialUDPIn(t, tp.client, f.listens[1])
	if !exchangeOnce(byName, []byte("by name"), 5*time.Second) {
		t.Error("no echo through the forward to echo.test")
	}
	v6 := dialUDPIn(t, tp.client, f.listens[2])
	if !exchangeOnce(v6, []byte("over IPv6"), 5*time.Second) {
		t.Errorf("no echo through the forward to [%s]:%s", targetIP6, udpEchoPort)
	}
}

// expectWait is how long to wait for an echo: long when one is expected,
// short when the flow is expected to be refused (its datagrams dropped).
func expectWait(expected bool) time.Duration {
	if expected {
		return 2 * time.Second
	}
	return 300 * time.Millisecond
}

// TestUDPLimitsAndIdle: per-connection and per-identity flow limits refuse
// with 429 connection_limit_reached; an idle flow is closed by the server
// after --udp-idle-timeout, and the next datagram opens a new one.
func TestUDPLimitsAndIdle(t *testing.T) {
	tp := newTopo(t, false)
	srv := tp.startServer(t, "--udp-idle-timeout", "3s", "--udp-max-flows-per-conn", "2", "--udp-max-flows-per-identity", "3")
	serveUDP(t, tp.target, targetIP4+":"+udpEchoPort, echo)
	args := append(tokenAuth("alice"), "--listen", "127.0.0.1:0", "--target", targetIP4+":"+udpEchoPort, "--idle-timeout", "1h", "--no-check")
	a := startUDPForwarder(t, tp.client, serverAddr, 1, args...)
	b := startUDPForwarder(t, tp.client, serverAddr, 1, args...)

	// Forwarder a: two peers fit its connection, the third does not.
	var peers []*net.UDPConn
	for i := range 3 {
		c := dialUDPIn(t, tp.client, a.listens[0])
		peers = append(peers, c)
		ok := exchangeOnce(c, []byte(fmt.Sprint("a", i)), expectWait(i < 2))
		if ok != (i < 2) {
			t.Errorf("forwarder a, peer %d: echo %v, want %v (2 flows per connection)", i, ok, i < 2)
		}
	}
	// Forwarder b: alice's third flow fits, her fourth does not.
	for i := range 2 {
		c := dialUDPIn(t, tp.client, b.listens[0])
		if i == 0 {
			peers = append(peers, c)
		}
		ok := exchangeOnce(c, []byte(fmt.Sprint("b", i)), expectWait(i < 1))
		if ok != (i < 1) {
			t.Errorf("forwarder b, peer %d: echo %v, want %v (3 flows per identity)", i, ok, i < 1)
		}
	}
	for _, f := range []*udpFwd{a, b} {
		st := f.status(t)
		if st.UDP.FlowsRefused != 1 || !strings.Contains(st.UDP.LastRefusal, "429") || !strings.Contains(st.UDP.LastRefusal, "connection_limit_reached") {
			t.Errorf("forwarder status: %d refused, last %q; want 1 refusal with 429 connection_limit_reached", st.UDP.FlowsRefused, st.UDP.LastRefusal)
		}
	}
	m := srv.metrics(t)
	if c, i := metricOr0(m, "masque_udp_refused_requests_total", `reason="conn_flow_limit"`), metricOr0(m, "masque_udp_refused_requests_total", `reason="identity_flow_limit"`); c != 1 || i != 1 {
		t.Errorf("refusals: conn_flow_limit %v, identity_flow_limit %v; want 1 and 1", c, i)
	}
	if v := metricOr0(m, "masque_udp_flows"); v != 3 {
		t.Errorf("masque_udp_flows = %v, want 3", v)
	}

	// Idle: the server closes all three flows after 3 s without traffic
	// (it checks every 3/8 s), and the forwarders notice.
	for i, c := range []*net.UDPConn{peers[0], peers[1], peers[3]} {
		if !exchangeOnce(c, []byte(fmt.Sprint("last", i)), 2*time.Second) {
			t.Errorf("flow %d: no echo before going idle", i)
		}
	}
	start := time.Now()
	waitUntil(t, "the server to close the idle flows", 10*time.Second, func() bool { return metricOr0(srv.metrics(t), "masque_udp_flows") == 0 })
	took := time.Since(start)
	if took < 2500*time.Millisecond || took > 6*time.Second {
		t.Errorf("idle flows closed %v after their last datagram, want about 3 s", took)
	}
	t.Logf("idle flows closed by the server %v after the last datagram (timeout 3 s)", took.Round(10*time.Millisecond))
	// The forwarders see the streams end; the refused peers' entries are
	// forgotten after a second.
	waitUntil(t, "the forwarders to see their flows closed", 5*time.Second, func() bool { return a.status(t).UDP.Flows+b.status(t).UDP.Flows == 0 })
	if !exchangeOnce(peers[0], []byte("again"), 3*time.Second) {
		t.Error("no echo on a new flow after the idle close")
	}
	if st := a.status(t); st.UDP.FlowsTotal < 4 {
		t.Errorf("forwarder a opened %d flows, want ≥ 4 (3, then a new one after the idle close)", st.UDP.FlowsTotal)
	}
}
