package e2e

import (
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServerRestartReconnect: masqued dies (SIGKILL) and stays down for
// 30 s, past QUIC's idle timeout, then comes back with the same state
// directory, hence the same stateless-reset key. While it is down the
// client keeps its TUN, routes and kill switch: TCP, UDP, DNS and ICMP
// from the client, to the target and to the client's own LAN (its gateway
// and former resolver), IPv4 and IPv6, put not one packet on c0 besides
// the client's attempts to reach the server. Once the server is back the
// client reconnects by itself, gets the same addresses back, and the
// tunnel carries traffic again within 5 s.
func TestServerRestartReconnect(t *testing.T) {
	tp := newTopo(t, false)
	stateDir := t.TempDir()
	srv := tp.startServer(t, "--state-dir", stateDir)
	outside := []string{targetIP4, targetIP6, lanIP4, lanIP6}

	// Control: without a tunnel every kind of probe leaves c0.
	dump := startCapture(t, tp.client, leakFilter, true)
	probeOutside(t, tp.client, outside...)
	checkCaptureSeesAll(t, "control without a tunnel", stopCapture(dump))

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
	killed := time.Now()
	// While the server is down: not one packet may leave c0 other than the
	// client's attempts to reach it. Outgoing only: the dead server's ICMP
	// port unreachable coming in is no leak. The client cannot tell a dead
	// server from a slow path until QUIC's idle timeout (30 s), so the
	// probes run for 30 s and until it has been reconnecting for 3 s.
	dump = startCapture(t, tp.client, leakFilter, true)
	answered := map[string]int{}
	rounds := 0
	var noticed time.Duration
	for ; rounds < 100; rounds++ {
		for k, n := range probeOutside(t, tp.client, outside...) {
			answered[k] += n
		}
		down := time.Since(killed)
		if noticed == 0 {
			if st := c.status(t); st.State == "reconnecting" {
				noticed = down
				if !st.KillSwitch {
					t.Errorf("status while reconnecting: kill switch off")
				}
			}
		}
		if down >= 30*time.Second && noticed != 0 && down-noticed >= 3*time.Second {
			break
		}
		if down > 60*time.Second {
			t.Fatalf("client not reconnecting 60 s after the server died; status %+v", c.status(t))
		}
	}
	if c.exited() {
		t.Fatalf("masque up exited while the server was down: %s", c.exitString())
	}
	if tables := runIn(t, tp.client, 10*time.Second, "nft", "list", "tables").stdout; !strings.Contains(tables, "masque_killswitch") {
		t.Errorf("no kill switch table while reconnecting:\n%s", tables)
	}
	leaked := stopCapture(dump)
	t.Logf("server down %v (client noticed after %v), %d probe rounds; answered: %s", time.Since(killed).Round(time.Second), noticed.Round(time.Second), rounds+1, kindsString(answered))
	checkNoLeak(t, "while reconnecting", leaked)
	for _, k := range probeKinds {
		if answered[k] != 0 {
			t.Errorf("%d %s probes answered while the server was down, want 0", answered[k], k)
		}
	}

	tp.startServer(t, "--state-dir", stateDir)
	// Ping until the tunnel carries traffic again.
	back, ok := untilReply(t, tp.client, targetIP4, 20*time.Second)
	if !ok {
		t.Fatalf("no ping through the tunnel 20 s after the server came back; client log:\n%s", tail(c.stderr.String(), 3000))
	}
	t.Logf("tunnel carried traffic again %v after the server restarted (down %v)", back.Round(time.Millisecond), time.Since(killed).Round(time.Second))
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

// TestServerRestartDuringTransfer: masqued dies (SIGKILL) in the middle of
// a TCP upload and comes straight back with the same state directory. The
// client learns of the restart from the new server's stateless reset at
// its next packet, reconnects with the same lease, and the TCP flow, which
// only saw a pause, completes intact.
func TestServerRestartDuringTransfer(t *testing.T) {
	tp := newTopo(t, false)
	stateDir := t.TempDir()
	srv := tp.startServer(t, "--state-dir", stateDir)
	c := tp.startClient(t, tp.client, tokenAuth("alice"))

	const size = 24 << 20 // 12 s at 2 MB/s
	x := startTransfer(t, tp, tp.client, 9100, size, 2<<20, false, 55*time.Second)
	time.Sleep(3 * time.Second)
	srv.wantExit0 = false
	srv.signal(syscall.SIGKILL)
	if !srv.wait(5 * time.Second) {
		t.Fatal("masqued survived SIGKILL")
	}
	restartAndReconnect(t, tp, c, stateDir)
	sent, _ := x.check(t, "upload across a server restart")
	t.Logf("%d MB across the restart arrived intact, %.1f s in all", sent.Bytes>>20, sent.Seconds)
	if c.exited() {
		t.Fatalf("masque up exited: %s", c.exitString())
	}
}

// TestServerDrainDuringTransfer: a rolling restart. masqued gets SIGTERM
// during an upload: it stops accepting and sends HTTP/3 GOAWAY; the client
// hears it at once and starts opening its next session while the old one
// keeps carrying the upload until the drain deadline; then masqued ends the
// session cleanly and exits, having undone its changes, and the client
// reconnects to the server started in its place. The upload arrives intact.
func TestServerDrainDuringTransfer(t *testing.T) {
	tp := newTopo(t, false)
	stateDir := t.TempDir()
	const drain = 3 * time.Second
	srv := tp.startServer(t, "--state-dir", stateDir, "--drain-timeout", drain.String())
	c := tp.startClient(t, tp.client, tokenAuth("alice"))

	const size = 24 << 20 // 12 s at 2 MB/s
	x := startTransfer(t, tp, tp.client, 9100, size, 2<<20, false, 55*time.Second)
	time.Sleep(3 * time.Second)
	took, killed := srv.stop(10 * time.Second)
	if killed || srv.exitCode() != 0 {
		t.Fatalf("masqued after SIGTERM: %s after %v (killed %v), want exit 0 after the %v drain", srv.exitString(), took, killed, drain)
	}
	t.Logf("masqued drained and exited 0 %v after SIGTERM", took.Round(time.Millisecond))
	// The session lasts the drain, then the server ends it; the rest
	// (a 250 ms grace for the ends to reach the clients, undoing NAT and
	// routes) is quick.
	if took < drain || took > drain+time.Second {
		t.Errorf("drain took %v, want the --drain-timeout %v and at most 1 s more", took.Round(time.Millisecond), drain)
	}
	if !strings.Contains(srv.stderr.String(), "session down") {
		t.Errorf("masqued did not end the session before exiting:\n%s", tail(srv.stderr.String(), 2000))
	}
	if !strings.Contains(c.stderr.String(), "server is draining (GOAWAY)") {
		t.Errorf("the client did not hear the GOAWAY:\n%s", tail(c.stderr.String(), 2000))
	}
	tp.checkClean(tp.server)
	// The client saw the end: it is reconnecting now, not waiting for an
	// idle timeout.
	waitUntil(t, "the client to notice the drain", 2*time.Second, func() bool { return c.status(t).State != "up" })

	restartAndReconnect(t, tp, c, stateDir)
	sent, _ := x.check(t, "upload across a drained restart")
	t.Logf("%d MB across the drain and restart arrived intact, %.1f s in all", sent.Bytes>>20, sent.Seconds)
	if c.exited() {
		t.Fatalf("masque up exited: %s", c.exitString())
	}
}

// restartAndReconnect starts masqued again with stateDir and waits for c
// to reconnect to it (its first reconnect), within 5 s.
func restartAndReconnect(t *testing.T, tp *topo, c *client, stateDir string) {
	t.Helper()
	tp.startServer(t, "--state-dir", stateDir)
	restarted := time.Now()
	waitUntil(t, "the client to reconnect", 10*time.Second, func() bool {
		st := c.status(t)
		return st.State == "up" && st.Reconnects == 1
	})
	t.Logf("client reconnected %v after the server restarted", time.Since(restarted).Round(time.Millisecond))
	if d := time.Since(restarted); d > 5*time.Second {
		t.Errorf("reconnect took %v, want ≤ 5 s", d.Round(time.Millisecond))
	}
}
