package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDNSAppliedAndRestored: masqued sends a DNS server; masque up points
// /etc/resolv.conf at it while the tunnel is up and puts the original back
// byte for byte when it stops, and after a SIGKILL masque down does. The
// client namespace gets a resolv.conf of its own (/etc/netns/NS/, which
// "ip netns exec" mounts over /etc/resolv.conf), so the host's is never
// touched.
func TestDNSAppliedAndRestored(t *testing.T) {
	tp := newTopo(t, false)
	nsDir := filepath.Join("/etc/netns", tp.client)
	if err := os.MkdirAll(nsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(nsDir) })
	orig := "# the client host's own resolver\nnameserver 192.0.2.53\nsearch example\n"
	if err := os.WriteFile(filepath.Join(nsDir, "resolv.conf"), []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	resolvConf := func() string {
		return runIn(t, tp.client, 10*time.Second, "cat", "/etc/resolv.conf").stdout
	}
	if got := resolvConf(); got != orig {
		t.Fatalf("the namespace's resolv.conf is not its own: %q", got)
	}
	tp.startServer(t, "--dns", "198.18.2.53", "--dns", "2001:db8:2::53")
	waitApplied := func(c *client) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := resolvConf()
			if strings.Contains(got, "nameserver 198.18.2.53\n") && strings.Contains(got, "nameserver 2001:db8:2::53\n") && !strings.Contains(got, "192.0.2.53") {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("resolv.conf not pointed at the tunnel's DNS servers:\n%s\nclient log:\n%s", got, tail(c.stderr.String(), 2000))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	waitApplied(c)
	c.signal(syscall.SIGINT)
	if !c.wait(10 * time.Second) {
		t.Fatal("masque up did not exit on SIGINT")
	}
	if got := resolvConf(); got != orig {
		t.Errorf("resolv.conf after masque up exited:\n%q\nwant the original byte for byte:\n%q", got, orig)
	}

	// After a crash, masque down restores it.
	c = tp.startClient(t, tp.client, tokenAuth("alice"))
	waitApplied(c)
	c.wantExit0 = false
	c.signal(syscall.SIGKILL)
	if !c.wait(5 * time.Second) {
		t.Fatal("masque up survived SIGKILL")
	}
	if got := resolvConf(); got == orig {
		t.Fatal("resolv.conf already restored after SIGKILL: the crash case tests nothing")
	}
	if r := runIn(t, tp.client, 20*time.Second, env.masque, "down", "--state-dir", c.stateDir); r.code != 0 {
		t.Fatalf("masque down: exit %d: %s", r.code, r.stderr)
	}
	if got := resolvConf(); got != orig {
		t.Errorf("resolv.conf after masque down:\n%q\nwant the original byte for byte:\n%q", got, orig)
	}
}
