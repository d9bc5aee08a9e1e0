package e2e

// Failover between a profile's servers (issue 15).

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestFailoverToSecondServer: masque up with two servers (here two
// masqued on two ports, with different pools) is up on the first; when
// the first drains and exits, the client moves to the second, which
// assigns addresses of another pool: the TUN follows them without exiting
// and under the kill switch, nothing leaks meanwhile, the inner ping
// resumes, and status names the second server and counts the failover.
func TestFailoverToSecondServer(t *testing.T) {
	tp := newTopo(t, false)
	const second = serverIP4 + ":4434"
	first := tp.startServer(t)
	c := tp.startClient(t, tp.client, tokenAuth("alice"), "--server", serverAddr, "--server", second, "--connect-timeout", "2s")
	if c.up.server != serverAddr {
		t.Fatalf("up on %s, want the first server (the second is not running)", c.up.server)
	}
	checkPing(t, tp.client, 2)
	// Not one packet may leave c0 but the client's QUIC to either server.
	filter := strings.Replace(leakFilter, "port 4433", "(port 4433 or port 4434)", 1)
	dump := startCapture(t, tp.client, filter, true)
	stopped := time.Now()
	first.stop(10 * time.Second)
	tp.startServer(t, "--listen", second, "--pool4", "100.70.0.0/16", "--pool6", "fd6d:6173:7175:6600::/64")
	var st status
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		st = c.status(t)
		if st.State == "up" && st.Server == second || time.Now().After(deadline) {
			break
		}
	}
	if st.Server != second || st.Failovers != 1 || st.State != "up" {
		t.Fatalf("status after the first server went away: state %s, server %s, failovers %d; want up on %s after 1 failover", st.State, st.Server, st.Failovers, second)
	}
	t.Logf("up on %s %v after the first server was told to stop; addresses %v", second, time.Since(stopped).Round(10*time.Millisecond), st.Addresses)
	moved := false
	for _, a := range st.Addresses {
		if p, err := netip.ParsePrefix(a); err == nil && netip.MustParsePrefix("100.70.0.0/16").Contains(p.Addr()) {
			moved = true
		}
	}
	if !moved {
		t.Errorf("addresses after the failover %v, want one of the second server's pool 100.70.0.0/16", st.Addresses)
	}
	if r := ping(t, tp.client, targetIP4, 3); r.received != 3 {
		t.Errorf("inner IPv4 ping after the failover: %d/3", r.received)
	}
	if r := ping(t, tp.client, targetIP6, 3); r.received != 3 {
		t.Errorf("inner IPv6 ping after the failover: %d/3", r.received)
	}
	if leaked := stopCapture(dump); len(leaked) != 0 {
		t.Errorf("%d packets left c0 outside the tunnel during the failover:\n%s", len(leaked), strings.Join(leaked[:min(5, len(leaked))], "\n"))
	}
	r := runIn(t, tp.client, 5*time.Second, "ip", "-o", "addr", "show", "dev", c.up.tun)
	if strings.Contains(r.stdout, "100.64.") || !strings.Contains(r.stdout, "100.70.") {
		t.Errorf("TUN addresses after the failover, want the second pool's only:\n%s", r.stdout)
	}
	if !strings.Contains(c.stderr.String(), "tunnel moved to new addresses") {
		t.Errorf("no line about the move in the client's log:\n%s", tail(c.stderr.String(), 3000))
	}
}
