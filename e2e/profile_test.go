package e2e

// Profiles and instances (issue 15): masque up NAME from a profile,
// masque down NAME from another process, masque status as non-root and
// after a crash.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// writeProfile writes profile name into a config directory of its own
// and returns the directory: the test server, its CA, alice's token and
// stateDir, plus extra lines.
func writeProfile(t *testing.T, name, stateDir string, extra ...string) string {
	t.Helper()
	dir := t.TempDir()
	body := fmt.Sprintf("# %s: written by the test\nserver = %q\nca = %q\ntoken-file = %q\nstate-dir = %q\n%s",
		name, serverAddr, filepath.Join(env.certDir, "ca.crt"), env.tokenFile["alice"], stateDir, strings.Join(extra, "\n"))
	if err := os.WriteFile(filepath.Join(dir, name+".conf"), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestProfileUpDown: masque up work reads /etc/masque/work.conf (here
// --config-dir), status names the instance, a non-root status says to run
// as root, and masque down work from another process stops the run,
// which restores the host and exits 0.
func TestProfileUpDown(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	stateDir := t.TempDir()
	cfg := writeProfile(t, "work", stateDir, `route = ["198.18.2.0/24", "2001:db8:2::/64"]`)
	c := tp.startClientArgv(t, tp.client, stateDir, []string{env.masque, "up", "work", "--config-dir", cfg})
	if !strings.Contains(c.stdout.String(), "connecting: server="+serverAddr+" instance=work\n") {
		t.Errorf("no connecting line on stdout:\n%s", c.stdout.String())
	}
	checkPing(t, tp.client, 3)
	r := runIn(t, tp.client, 10*time.Second, env.masque, "status", "work", "--config-dir", cfg)
	if r.code != 0 || !strings.Contains(r.stdout, "state:     up\n") || !strings.Contains(r.stdout, fmt.Sprintf("instance:  work (pid %d)", c.cmd.Process.Pid)) ||
		!strings.Contains(r.stdout, "routes:    [198.18.2.0/24 2001:db8:2::/64]") {
		t.Errorf("masque status work: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// As nobody: the socket is root's.
	r = runIn(t, tp.client, 10*time.Second, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		env.masque, "status", "--state-dir", stateDir)
	if r.code != 1 || !strings.Contains(r.stderr, "permission denied: run as root") {
		t.Errorf("masque status as nobody: exit %d, stderr %q, want 1 and a line saying to run as root", r.code, r.stderr)
	}
	r = runIn(t, tp.client, 10*time.Second, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		env.masque, "down", "--state-dir", stateDir)
	if r.code != 1 || !strings.Contains(r.stderr, "needs root") {
		t.Errorf("masque down as nobody: exit %d, stderr %q, want 1 and a line saying it needs root", r.code, r.stderr)
	}
	start := time.Now()
	r = runIn(t, tp.client, 30*time.Second, env.masque, "down", "work", "--config-dir", cfg)
	if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("stopped instance work (pid %d)", c.cmd.Process.Pid)) {
		t.Errorf("masque down work: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if !c.exited() || c.exitCode() != 0 {
		t.Errorf("masque up after masque down: exited %v, %s; want it gone with exit 0 by the time down returns", c.exited(), c.exitString())
	}
	t.Logf("masque down work took %v", time.Since(start).Round(time.Millisecond))
	tp.checkClean(tp.client)
	r = runIn(t, tp.client, 10*time.Second, env.masque, "status", "work", "--config-dir", cfg)
	if r.code != 1 || !strings.Contains(r.stderr, "instance work: no tunnel is up") {
		t.Errorf("masque status work after down: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestProfileCrash: after a kill -9 of a full tunnel, status and list say
// the host is blocked and how to unblock it, and masque down NAME does.
func TestProfileCrash(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	stateDir := t.TempDir()
	cfg := writeProfile(t, "home", stateDir)
	c := tp.startClientArgv(t, tp.client, stateDir, []string{env.masque, "up", "home", "--config-dir", cfg})
	pid := c.cmd.Process.Pid
	c.signal(syscall.SIGKILL)
	if !c.wait(5 * time.Second) {
		t.Fatal("masque up survived SIGKILL")
	}
	r := runIn(t, tp.client, 10*time.Second, env.masque, "status", "home", "--config-dir", cfg)
	want := fmt.Sprintf("masque: host blocked by a crashed masque up (pid %d, kill switch on): run masque down home\n", pid)
	if r.code != 1 || r.stderr != want {
		t.Errorf("masque status home after kill -9: exit %d, stderr %q, want 1 and %q", r.code, r.stderr, want)
	}
	r = runIn(t, tp.client, 10*time.Second, env.masque, "list", "--config-dir", cfg)
	if r.code != 0 || !strings.Contains(r.stdout, "crashed, host blocked: run masque down home") {
		t.Errorf("masque list after kill -9: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runIn(t, tp.client, 20*time.Second, env.masque, "down", "home", "--config-dir", cfg)
	if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("undid what masque up (pid %d) left", pid)) {
		t.Errorf("masque down home: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	tp.checkClean(tp.client)
}

// TestInviteProfileAsIs: masqued invite writes a profile (a fresh client
// certificate from the test CA, the CA pinned inline); masque up --config
// with that file and no other flag brings the tunnel up.
func TestInviteProfileAsIs(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t, "--client-ca", env.certDir+"/ca.crt")
	// A copy of the CA: invite issues into the directory it is given.
	pki := t.TempDir()
	for _, f := range []string{"ca.crt", "ca.key"} {
		b, err := os.ReadFile(filepath.Join(env.certDir, f))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(pki, f), string(b))
	}
	profile := filepath.Join(t.TempDir(), "guest.conf")
	stateDir := t.TempDir()
	r := runIn(t, tp.server, 20*time.Second, env.masqued, "invite", "guest", "--server", serverAddr, "--cert-dir", pki,
		"--out", profile, "--set", fmt.Sprintf("state-dir=%q", stateDir))
	if r.code != 0 || !strings.Contains(r.stdout, "wrote "+profile) {
		t.Fatalf("masqued invite: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	c := tp.startClientArgv(t, tp.client, stateDir, []string{env.masque, "up", "--config", profile})
	if !strings.Contains(c.stdout.String(), "instance=guest") {
		t.Errorf("the instance is not named after the profile:\n%s", c.stdout.String())
	}
	checkPing(t, tp.client, 3)
}
