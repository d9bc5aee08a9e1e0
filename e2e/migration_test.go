package e2e

import (
	"regexp"
	"strconv"
	"testing"
	"time"
)

// pingGaps pings addr from ns every 0.1 s for d and returns how many
// replies came back and the longest time between two consecutive replies.
func pingGaps(t *testing.T, ns, addr string, d time.Duration) (int, time.Duration, string) {
	t.Helper()
	secs := strconv.Itoa(int(d.Seconds()))
	r := runIn(t, ns, d+10*time.Second, "ping", "-n", "-D", "-i", "0.1", "-W", "1", "-w", secs, addr)
	re := regexp.MustCompile(`^\[(\d+\.\d+)\] \d+ bytes from`)
	var last, gap float64
	n := 0
	for _, l := range nonEmptyLines(r.stdout) {
		m := re.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		ts, _ := strconv.ParseFloat(m[1], 64)
		if n > 0 && ts-last > gap {
			gap = ts - last
		}
		last = ts
		n++
	}
	return n, time.Duration(gap * float64(time.Second)), r.stdout
}

// TestClientAddressChange: the client's address changes under a running
// tunnel (its interface is re-addressed; the QUIC socket, bound to the
// wildcard, now sends from the new address). The server validates the new
// path and follows it: same session, no reconnect, traffic stalls at most a
// second, and a transfer across the change arrives intact.
func TestClientAddressChange(t *testing.T) {
	tp := newTopo(t, false)
	srv := tp.startServer(t)
	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	checkPing(t, tp.client, 2)
	sysctl(t, tp.client, "net.ipv4.conf.all.promote_secondaries=1", "net.ipv4.conf.c0.promote_secondaries=1")

	x := startTransfer(t, tp, tp.client, 9100, 16<<20, 2<<20, false, 50*time.Second)
	pinged := startPingGaps(t, tp.client, targetIP4, 6*time.Second)
	time.Sleep(2 * time.Second)
	const newIP = "198.18.1.9"
	mustRun(t, "ip", "-n", tp.client, "addr", "add", newIP+"/24", "dev", "c0")
	mustRun(t, "ip", "-n", tp.client, "addr", "del", clientIP4+"/24", "dev", "c0")
	mustRun(t, "ip", "-n", tp.client, "route", "replace", "default", "via", serverIP4)
	defer func() {
		mustRun(t, "ip", "-n", tp.client, "addr", "add", clientIP4+"/24", "dev", "c0")
		mustRun(t, "ip", "-n", tp.client, "addr", "del", newIP+"/24", "dev", "c0")
		mustRun(t, "ip", "-n", tp.client, "route", "replace", "default", "via", serverIP4)
	}()

	checkPathFollowed(t, "the address change", pinged, x, c, srv)
}

// pingGapsResult is what pingGaps measured.
type pingGapsResult struct {
	n   int
	gap time.Duration
	out string
}

// startPingGaps runs pingGaps in the background.
func startPingGaps(t *testing.T, ns, addr string, d time.Duration) <-chan pingGapsResult {
	ch := make(chan pingGapsResult, 1)
	go func() {
		n, g, out := pingGaps(t, ns, addr, d)
		ch <- pingGapsResult{n, g, out}
	}()
	return ch
}

// checkPathFollowed checks what a change of the client's path (address,
// NAT port) must leave: replies to the pings never paused for more than a
// second, the transfer arrived whole, and the session is the one there
// was.
func checkPathFollowed(t *testing.T, what string, pinged <-chan pingGapsResult, x *transfer, c *client, srv *server) {
	t.Helper()
	p := <-pinged
	t.Logf("%s: %d ping replies in 6 s, longest gap %v", what, p.n, p.gap.Round(time.Millisecond))
	if p.gap > time.Second || p.n < 40 {
		t.Errorf("%s stalled the tunnel %v (%d replies); want ≤ 1 s\n%s", what, p.gap.Round(time.Millisecond), p.n, tail(p.out, 2000))
	}
	x.check(t, "across "+what)
	if st := c.status(t); st.Reconnects != 0 || st.State != "up" {
		t.Errorf("after %s: state %q, %d reconnects; want up, 0 (the same session)", what, st.State, st.Reconnects)
	}
	if n := srv.sessions(t); n != 1 {
		t.Errorf("masqued has %v sessions, want the one it had", n)
	}
}
