package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestForcedExitStaysBlocked: when the server refuses the client for good
// on a reconnect (its token was removed while it drained and restarted),
// masque up exits 1 and fails closed, as a crash would: the kill switch
// stays and nothing reaches the target, the TUN and routes are gone, and
// the last line says that masque down unblocks the host. masque down then
// leaves the namespace as it was.
func TestForcedExitStaysBlocked(t *testing.T) {
	tp := newTopo(t, false)
	tokens := filepath.Join(t.TempDir(), "tokens")
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(tokens, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("alice " + env.token["alice"] + "\n")
	srv := tp.startServer(t, "--tokens", tokens)
	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	checkPing(t, tp.client, 2)
	c.wantExit0 = false

	// alice's token goes; the server drains, and a new one starts.
	write("bob " + env.token["bob"] + "\n")
	srv.signal(syscall.SIGTERM)
	if !srv.wait(10 * time.Second) {
		t.Fatal("masqued did not drain and exit on SIGTERM")
	}
	tp.startServer(t, "--tokens", tokens)
	if !c.wait(30 * time.Second) {
		t.Fatalf("masque up still runs 30 s after the server refused it; log:\n%s", tail(c.stderr.String(), 3000))
	}
	if c.exitCode() != 1 {
		t.Errorf("masque up exited %d, want 1", c.exitCode())
	}
	lines := strings.Split(strings.TrimSpace(c.stderr.String()), "\n")
	last := lines[len(lines)-1]
	for _, want := range []string{"401", "stays blocked", "masque down --state-dir " + c.stateDir} {
		if !strings.Contains(last, want) {
			t.Errorf("last line of masque up %q lacks %q", last, want)
		}
	}
	if !hasKillSwitch(ruleset(t, tp.client)) {
		t.Errorf("kill switch gone after a forced exit:\n%s", ruleset(t, tp.client))
	}
	checkPingFails(t, tp.client)
	if r := runIn(t, tp.client, 10*time.Second, "ip", "link", "show", "masque0"); r.code == 0 {
		t.Errorf("the TUN is still there after the exit:\n%s", r.stdout)
	}

	if r := runIn(t, tp.client, 20*time.Second, env.masque, "down", "--state-dir", c.stateDir); r.code != 0 {
		t.Fatalf("masque down: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if hasKillSwitch(ruleset(t, tp.client)) {
		t.Errorf("kill switch still up after masque down")
	}
	if !tp.checkClean(tp.client) {
		t.FailNow()
	}
}

// TestForcedExitOnRefusedReassignment: a server that assigns, on the
// reconnect, what the client refuses (an address in its LAN) ends the run
// as a refused token does: exit 1, the kill switch stays, and masque down
// unblocks.
func TestForcedExitOnRefusedReassignment(t *testing.T) {
	tp := newTopo(t, false)
	tp.startRogueServer(t, "-assign", "100.64.0.2/32", "-assign-later", "198.18.1.128/25", "-close-after", "1s")
	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	c.wantExit0 = false
	if !c.wait(30 * time.Second) {
		t.Fatalf("masque up still runs 30 s after the server's refused reassignment; log:\n%s", tail(c.stderr.String(), 3000))
	}
	lines := strings.Split(strings.TrimSpace(c.stderr.String()), "\n")
	last := lines[len(lines)-1]
	if c.exitCode() != 1 {
		t.Errorf("masque up exited %d, want 1", c.exitCode())
	}
	for _, want := range []string{"address assignment refused", "stays blocked", "masque down"} {
		if !strings.Contains(last, want) {
			t.Errorf("last line of masque up %q lacks %q", last, want)
		}
	}
	if !hasKillSwitch(ruleset(t, tp.client)) {
		t.Errorf("kill switch gone after a refused reassignment")
	}
	if r := runIn(t, tp.client, 20*time.Second, env.masque, "down", "--state-dir", c.stateDir); r.code != 0 {
		t.Fatalf("masque down: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if !tp.checkClean(tp.client) {
		t.FailNow()
	}
}
