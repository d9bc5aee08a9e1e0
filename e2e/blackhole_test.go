package e2e

import (
	"testing"
	"time"
)

// blackhole drops the QUIC flow both ways until the returned function is
// called: on input, in the server namespace (towards masqued) and in the
// client namespace (towards masque up), so that it looks like a dead path.
// (Dropping on output would fail the sender's sendmsg with EPERM, which
// quic-go takes as a fatal socket error: no network does that.)
func blackhole(t *testing.T, tp *topo) (restore func()) {
	t.Helper()
	toServer := nftInputDrop(t, tp.server, "e2e_blackhole", "udp dport 4433 drop")
	toClient := nftInputDrop(t, tp.client, "e2e_blackhole", "udp sport 4433 drop")
	return func() { toServer(); toClient() }
}

// TestBlackhole: a 10 s blackhole in the middle of a TCP transfer is
// ridden out by QUIC and TCP (same session, transfer intact); a 60 s one
// outlasts QUIC's 30 s idle timeout, the client declares the tunnel lost,
// keeps trying, and it is back within 5 s of the path returning, without a
// manual step.
func TestBlackhole(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	c := tp.startClient(t, tp.client, tokenAuth("alice"))

	// 10 s: 40 MB at 2 MB/s takes 20 s, the blackhole sits in its middle.
	x := startTransfer(t, tp, tp.client, 9100, 40<<20, 2<<20, false, 80*time.Second)
	time.Sleep(5 * time.Second)
	restore := blackhole(t, tp)
	time.Sleep(10 * time.Second)
	restore()
	x.check(t, "across a 10 s blackhole")
	if st := c.status(t); st.Reconnects != 0 || st.State != "up" {
		t.Errorf("after a 10 s blackhole: state %q, %d reconnects; want up, 0 (the session rides it out)", st.State, st.Reconnects)
	}

	// 60 s: twice the idle timeout. The client declares the tunnel lost
	// after ~30 s and keeps trying for the other 30 s.
	// What the client sends towards the server while it is cut off: a
	// silence longer than 5 s while reconnecting means that a path
	// returning at its start could not be back within 5 s, whatever this
	// run's timing.
	attempts := startCapture(t, tp.client, "udp and dst host "+serverIP4+" and dst port 4433", true)
	restore = blackhole(t, tp)
	cut := time.Now()
	for c.status(t).State != "reconnecting" {
		if time.Since(cut) > 45*time.Second {
			t.Fatal("client did not declare the tunnel lost within 45 s of a blackhole")
		}
		time.Sleep(time.Second)
	}
	lost := time.Now()
	time.Sleep(time.Until(cut.Add(60 * time.Second)))
	if st := c.status(t); st.State != "reconnecting" || c.exited() {
		t.Fatalf("after 60 s of blackhole: state %q (exited: %v), want still reconnecting", st.State, c.exited())
	}
	restore()
	restored := time.Now()
	back, ok := untilReply(t, tp.client, targetIP4, 15*time.Second)
	if !ok {
		t.Fatalf("no traffic 15 s after the path returned; client log:\n%s", tail(c.stderr.String(), 2000))
	}
	sent := captureTimes(t, stopCapture(attempts), time.Now())
	silence := longestSilence(sent, lost, restored)
	t.Logf("60 s blackhole: tunnel declared lost after %v, longest silence towards the server while reconnecting %v, back %v after the path returned",
		lost.Sub(cut).Round(time.Second), silence.Round(time.Millisecond), back.Round(time.Millisecond))
	if back > 5*time.Second {
		t.Errorf("back after %v, want ≤ 5 s", back.Round(time.Millisecond))
	}
	if silence >= 5*time.Second {
		t.Errorf("while reconnecting the client sent nothing to the server for %v: a path returning then is back after more than 5 s", silence.Round(time.Millisecond))
	}
	if st := c.status(t); st.Reconnects != 1 || st.State != "up" {
		t.Errorf("after the long blackhole: state %q, %d reconnects; want up, 1", st.State, st.Reconnects)
	}
}
