package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSIGHUPReloadsTokens: SIGHUP makes masqued re-read its tokens file.
// A token added to it is accepted from then on, one removed is refused for
// new tunnels, the session already up under it stays, and a file that does
// not parse changes nothing.
func TestSIGHUPReloadsTokens(t *testing.T) {
	tp := newTopo(t, true)
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	carolTok := "carol-e2e-token-" + randomHex(8)
	carolFile := filepath.Join(dir, "carol.token")
	write := func(path, text string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(carolFile, carolTok+"\n")
	write(tokens, "alice "+env.token["alice"]+"\n")
	srv := tp.startServer(t, "--tokens", tokens)
	alice := tp.startClient(t, tp.client, tokenAuth("alice"))
	checkPing(t, tp.client, 2)

	carolAuth := []string{"--token-file", carolFile}
	r := runIn(t, tp.client2, 30*time.Second, clientArgv(t.TempDir(), carolAuth)...)
	if r.code != 1 || !strings.Contains(r.stderr, "401") {
		t.Fatalf("carol before the reload: exit %d, want 1 with a 401\n%s", r.code, r.stderr)
	}

	reloaded := func(what string, n int) {
		t.Helper()
		srv.signal(syscall.SIGHUP)
		waitUntil(t, what, 10*time.Second, func() bool { return strings.Count(srv.stderr.String(), "msg=\"reload: ") >= n })
	}
	// carol in, alice out.
	write(tokens, "carol "+carolTok+"\n")
	reloaded("the reload", 1)
	if !strings.Contains(srv.stderr.String(), "configuration applied") {
		t.Fatalf("masqued did not reload:\n%s", tail(srv.stderr.String(), 2000))
	}
	// A new tunnel for alice is refused now (from the second client's
	// namespace: in the first, alice's running full tunnel is an instance
	// a second one may not stand beside).
	r = runIn(t, tp.client2, 30*time.Second, clientArgv(t.TempDir(), tokenAuth("alice"))...)
	if r.code != 1 || !strings.Contains(r.stderr, "401") {
		t.Errorf("alice's second tunnel after her token was removed: exit %d, want 1 with a 401\n%s", r.code, r.stderr)
	}
	tp.startClient(t, tp.client2, carolAuth)
	checkPing(t, tp.client2, 2)
	// alice's session, authenticated before, stays.
	checkPing(t, tp.client, 2)
	if st := alice.status(t); st.State != "up" || st.Reconnects != 0 {
		t.Errorf("alice after the reload: state %q, %d reconnects; want up, 0", st.State, st.Reconnects)
	}

	// A broken file changes nothing.
	write(tokens, "this is not a tokens file\n")
	reloaded("the failed reload", 2)
	if !strings.Contains(srv.stderr.String(), "nothing changed") {
		t.Errorf("masqued did not report the bad file:\n%s", tail(srv.stderr.String(), 2000))
	}
	checkPing(t, tp.client2, 2)
	if srv.exited() {
		t.Fatalf("masqued exited on SIGHUP: %s", srv.exitString())
	}
}

// TestSIGHUPReloadsPolicy: SIGHUP re-reads the configuration file and
// applies a new deny list without dropping the session: the tunnel's next
// packets to the denied target are dropped with ICMP administratively
// prohibited and counted, other destinations still pass, the client does
// not reconnect; a CONNECT-UDP flow to the target is closed and a new one
// refused. A file that does not parse changes nothing; removing the deny
// opens the target again.
func TestSIGHUPReloadsPolicy(t *testing.T) {
	tp := newTopo(t, true)
	cfg := filepath.Join(t.TempDir(), "masqued.conf")
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("deny = []\n")
	srv := tp.startServer(t, "--config", cfg)
	reloads := 0
	reload := func(want string) {
		t.Helper()
		reloads++
		srv.signal(syscall.SIGHUP)
		waitUntil(t, "the reload", 10*time.Second, func() bool { return strings.Count(srv.stderr.String(), `msg="reload: `) >= reloads })
		if !strings.Contains(srv.stderr.String(), want) {
			t.Fatalf("after SIGHUP masqued did not log %q:\n%s", want, tail(srv.stderr.String(), 2000))
		}
	}
	client := tp.startClient(t, tp.client, tokenAuth("alice"))
	checkPing(t, tp.client, 2)
	serveUDP(t, tp.target, targetIP4+":"+udpEchoPort, echo)
	fwd := startUDPForwarder(t, tp.client2, serverAddr, 1, append(tokenAuth("bob"),
		"--listen", "127.0.0.1:0", "--target", targetIP4+":"+udpEchoPort)...)
	peer := dialUDPIn(t, tp.client2, fwd.listens[0])
	if !exchangeOnce(peer, []byte("before"), 3*time.Second) {
		t.Fatal("no echo through CONNECT-UDP before the reload")
	}

	denied := func() float64 {
		return metricOr0(srv.metrics(t), "masque_tunnel_dropped_packets_total", `reason="destination_denied"`)
	}
	d0 := denied()
	write(`deny = ["` + targetIP4 + `/32"]`)
	reload(`udp_flows_closed=1`)
	// One ping at a time: ping stops at its first ICMP error.
	const n = 5
	var answered, filtered int
	for range n {
		r := ping(t, tp.client, targetIP4, 1)
		answered += r.received
		filtered += strings.Count(r.out, "Packet filtered")
	}
	t.Logf("ping %s after the deny: %d of %d answered, %d \"Packet filtered\"", targetIP4, answered, n, filtered)
	if answered != 0 || filtered != n {
		t.Errorf("ping %s after the reload denied it: %d answered, %d administratively prohibited; want 0 and %d", targetIP4, answered, filtered, n)
	}
	if got := denied() - d0; got != n {
		t.Errorf("destination_denied drops after the deny: %v, want %d", got, n)
	}
	if r := ping(t, tp.client, targetIP6, 2); r.received != 2 {
		t.Errorf("ping %s (not denied) after the reload: %d of 2 answered", targetIP6, r.received)
	}
	if st := client.status(t); st.State != "up" || st.Reconnects != 0 {
		t.Errorf("client after the reload: state %q, %d reconnects; want up, 0", st.State, st.Reconnects)
	}
	waitUntil(t, "the forwarder to see its flow closed", 5*time.Second, func() bool { return fwd.status(t).UDP.Flows == 0 })
	if exchangeOnce(peer, []byte("after"), 1500*time.Millisecond) {
		t.Error("an echo through CONNECT-UDP after the deny")
	}
	waitUntil(t, "the new flow's refusal", 5*time.Second, func() bool { return fwd.status(t).UDP.FlowsRefused == 1 })
	if st := fwd.status(t); !strings.Contains(st.UDP.LastRefusal, "403") || !strings.Contains(st.UDP.LastRefusal, "destination_ip_prohibited") {
		t.Errorf("new flow after the deny: %q, want 403 destination_ip_prohibited", st.UDP.LastRefusal)
	}
	m := srv.metrics(t)
	if v := metricOr0(m, "masque_udp_flows"); v != 0 {
		t.Errorf("masque_udp_flows after the deny = %v, want 0", v)
	}

	// A file that does not parse changes nothing.
	write(`deny = ["` + targetIP4 + `/32"]` + "\nno_such_key = 1\n")
	reload("nothing changed")
	write("deny = []\n")
	reload("configuration applied")
	checkPing(t, tp.client, 2)
	if st := client.status(t); st.Reconnects != 0 {
		t.Errorf("client after three reloads: %d reconnects, want 0", st.Reconnects)
	}
	time.Sleep(1100 * time.Millisecond) // the forwarder forgets a refused peer after a second
	if !exchangeOnce(peer, []byte("again"), 3*time.Second) {
		t.Error("no echo through CONNECT-UDP after the deny was removed")
	}
}
