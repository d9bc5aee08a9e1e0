package e2e

import (
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServerRestartReconnect: masqued dies (SIGKILL) and comes back with the
// same state directory, hence the same stateless-reset key. While it is
// down nothing leaves the client outside the tunnel. The client keeps its
// TUN, routes and kill switch, notices at its next packet (the new server
// answers it with a stateless reset), reconnects by itself, gets the same
// addresses back, and the tunnel carries traffic again within 5 s.
func TestServerRestartReconnect(t *testing.T) {
	tp := newTopo(t, false)
	stateDir := t.TempDir()
	srv := tp.startServer(t, "--state-dir", stateDir)
	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	checkPing(t, tp.client, 3)
	before := c.status(t)
	if !before.KillSwitch {
		t.Errorf("status: kill switch off for a full tunnel")
	}

	srv.wantExit0 = false
	srv.signal(syscall.SIGKILL)
	if !srv.wait(5 * time.Second) {
		t.Fatal("masqued survived SIGKILL")
	}
	// While the server is down the client reconnects in vain: not one packet
	// may leave c0 other than its attempts to reach the server.
	// Outgoing only: the dead server's ICMP port unreachable coming in is
	// no leak.
	dump := startCapture(t, tp.client, leakFilter, true)
	for _, dst := range []string{targetIP4, targetIP6, serverIP4} {
		if r := ping(t, tp.client, dst, 3); r.received != 0 {
			t.Errorf("ping %s answered while the server was down: %s", dst, r.out)
		}
	}
	// (The client cannot tell a dead server from a slow path until QUIC's
	// idle timeout; a restarted one it learns of from the stateless reset.)
	time.Sleep(300 * time.Millisecond)
	dump.stop(5 * time.Second)
	if leaked := nonEmptyLines(dump.stdout.String()); len(leaked) > 0 {
		t.Errorf("%d packets left c0 outside the tunnel while reconnecting:\n%s", len(leaked), tail(strings.Join(leaked, "\n"), 3000))
	}

	tp.startServer(t, "--state-dir", stateDir)
	restarted := time.Now()

	// Ping until the tunnel carries traffic again (each ping also gives the
	// client a packet to send, which draws the stateless reset).
	var back time.Duration
	for deadline := time.Now().Add(20 * time.Second); ; {
		if r := ping(t, tp.client, targetIP4, 1); r.received == 1 {
			back = time.Since(restarted)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ping through the tunnel 20 s after the server came back; client log:\n%s", tail(c.stderr.String(), 3000))
		}
	}
	t.Logf("tunnel carried traffic again %v after the server restarted", back.Round(time.Millisecond))
	if back > 5*time.Second {
		t.Errorf("reconnect took %v, want ≤ 5 s", back.Round(time.Millisecond))
	}
	checkPing(t, tp.client, 3)
	after := c.status(t)
	if after.State != "up" || after.Reconnects != 1 {
		t.Errorf("status after the reconnect: state %q, %d reconnects; want up, 1", after.State, after.Reconnects)
	}
	if !slices.Equal(after.Addresses, before.Addresses) {
		t.Errorf("addresses after the reconnect %v, want the lease back %v", after.Addresses, before.Addresses)
	}
	if log := c.stderr.String(); !strings.Contains(log, "tunnel lost, reconnecting") || !strings.Contains(log, "tunnel back") {
		t.Errorf("client log does not say it lost and regained the tunnel:\n%s", tail(log, 2000))
	}
	if c.exited() {
		t.Fatalf("masque up exited: %s", c.exitString())
	}
}
