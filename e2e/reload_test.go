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
		waitUntil(t, what, 10*time.Second, func() bool { return strings.Count(srv.stderr.String(), "reload: tokens") >= n })
	}
	// carol in, alice out.
	write(tokens, "carol "+carolTok+"\n")
	reloaded("the reload", 1)
	if !strings.Contains(srv.stderr.String(), "tokens reloaded") {
		t.Fatalf("masqued did not reload:\n%s", tail(srv.stderr.String(), 2000))
	}
	tp.startClient(t, tp.client2, carolAuth)
	checkPing(t, tp.client2, 2)
	// alice's session, authenticated before, stays.
	checkPing(t, tp.client, 2)
	if st := alice.status(t); st.State != "up" || st.Reconnects != 0 {
		t.Errorf("alice after the reload: state %q, %d reconnects; want up, 0", st.State, st.Reconnects)
	}
	// A new tunnel for alice is refused now.
	r = runIn(t, tp.client, 30*time.Second, append(clientArgv(t.TempDir(), tokenAuth("alice")), "--tun", "mq1")...)
	if r.code != 1 || !strings.Contains(r.stderr, "401") {
		t.Errorf("alice's second tunnel after her token was removed: exit %d, want 1 with a 401\n%s", r.code, r.stderr)
	}

	// A broken file changes nothing.
	write(tokens, "this is not a tokens file\n")
	reloaded("the failed reload", 2)
	if !strings.Contains(srv.stderr.String(), "tokens unchanged") {
		t.Errorf("masqued did not report the bad file:\n%s", tail(srv.stderr.String(), 2000))
	}
	checkPing(t, tp.client2, 2)
	if srv.exited() {
		t.Fatalf("masqued exited on SIGHUP: %s", srv.exitString())
	}
}
