package e2e

import (
	"strconv"
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
// ridden out by QUIC and TCP (same session, transfer intact); a 35 s one
// outlasts QUIC's 30 s idle timeout, the client declares the tunnel lost,
// and it is back within 5 s of the path returning, without a manual step.
func TestBlackhole(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	c := tp.startClient(t, tp.client, tokenAuth("alice"))

	// 10 s: 40 MB at 2 MB/s takes 20 s, the blackhole sits in its middle.
	sink := startTool(t, tp.target, "tcpsink", "-listen", targetIP4+":9100", "-timeout", "90s")
	sendDone := make(chan result, 1)
	go func() {
		r, _ := runInErr(tp.client, 90*time.Second, env.nettool, "tcpsend", "-to", targetIP4+":9100",
			"-bytes", strconv.Itoa(40<<20), "-rate", strconv.Itoa(2<<20), "-timeout", "80s")
		sendDone <- r
	}()
	time.Sleep(5 * time.Second)
	restore := blackhole(t, tp)
	time.Sleep(10 * time.Second)
	restore()
	send := <-sendDone
	checkTransfer(t, "across a 10 s blackhole", send, sink, 40<<20)
	if st := c.status(t); st.Reconnects != 0 || st.State != "up" {
		t.Errorf("after a 10 s blackhole: state %q, %d reconnects; want up, 0 (the session rides it out)", st.State, st.Reconnects)
	}

	// 35 s: longer than the idle timeout.
	restore = blackhole(t, tp)
	deadline := time.Now().Add(45 * time.Second)
	for c.status(t).State != "reconnecting" {
		if time.Now().After(deadline) {
			t.Fatal("client did not declare the tunnel lost within 45 s of a blackhole")
		}
		time.Sleep(time.Second)
	}
	restore()
	returned := time.Now()
	for {
		if r := ping(t, tp.client, targetIP4, 1); r.received == 1 {
			break
		}
		if time.Since(returned) > 15*time.Second {
			t.Fatalf("no traffic 15 s after the path returned; client log:\n%s", tail(c.stderr.String(), 2000))
		}
	}
	back := time.Since(returned)
	t.Logf("tunnel back %v after the path returned", back.Round(time.Millisecond))
	if back > 5*time.Second {
		t.Errorf("back after %v, want ≤ 5 s", back.Round(time.Millisecond))
	}
	if st := c.status(t); st.Reconnects != 1 || st.State != "up" {
		t.Errorf("after the long blackhole: state %q, %d reconnects; want up, 1", st.State, st.Reconnects)
	}
}
