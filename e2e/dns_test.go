package e2e

import (
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/masque-vpn/masque/tun/resolvedtest"
)

// TestDNSAppliedAndRestored: masqued sends a DNS server; masque up points
// /etc/resolv.conf at it while the tunnel is up and puts the original back
// byte for byte when it stops, and after a SIGKILL masque down does. The
// client namespace gets a resolv.conf of its own (/etc/netns/NS/, which
// "ip netns exec" mounts over /etc/resolv.conf), so the host's is never
// touched.
func TestDNSAppliedAndRestored(t *testing.T) {
	tp := newTopo(t, false)
	orig := "# the client host's own resolver\nnameserver 192.0.2.53\nsearch example\n"
	resolvConf := clientResolvConf(t, tp, orig)
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

// clientResolvConf gives the client namespace a resolv.conf of its own
// holding orig (/etc/netns/NS/, which "ip netns exec" mounts over
// /etc/resolv.conf), so that the host's is never touched, and returns a
// function that reads it as the namespace sees it.
func clientResolvConf(t *testing.T, tp *topo, orig string) func() string {
	t.Helper()
	nsDir := filepath.Join("/etc/netns", tp.client)
	if err := os.MkdirAll(nsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(nsDir) })
	if err := os.WriteFile(filepath.Join(nsDir, "resolv.conf"), []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	resolvConf := func() string {
		return runIn(t, tp.client, 10*time.Second, "cat", "/etc/resolv.conf").stdout
	}
	if got := resolvConf(); got != orig {
		t.Fatalf("the namespace's resolv.conf is not its own: %q", got)
	}
	return resolvConf
}

// TestDNSThroughResolved: with a (fake) systemd-resolved on the system
// bus, masque up --dns-mode resolved hands the server's DNS servers to it
// for the TUN's link, with the routing domain "~." and the default route,
// and reverts the link when it stops, while the link still exists;
// resolv.conf stays as it is. --dns-mode auto leaves this resolved alone:
// it serves the host's network namespace, not the client's.
func TestDNSThroughResolved(t *testing.T) {
	tp := newTopo(t, false)
	// resolved's own stub file: only the namespace tells auto mode that
	// this resolved is not the client's.
	orig := "# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).\nnameserver 127.0.0.53\noptions edns0 trust-ad\n"
	resolvConf := clientResolvConf(t, tp, orig)
	fake := resolvedtest.Start(t) // masque inherits DBUS_SYSTEM_BUS_ADDRESS
	tp.startServer(t, "--dns", "198.18.2.53", "--dns", "2001:db8:2::53")
	dnsApplied := func(c *client) string {
		t.Helper()
		l, err := c.waitLine(c.stderr, 10*time.Second, func(l string) bool { return strings.Contains(l, `msg="dns applied"`) })
		if err != nil {
			t.Fatalf("%v\nclient log:\n%s", err, tail(c.stderr.String(), 2000))
		}
		return l
	}
	stop := func(c *client) {
		t.Helper()
		c.signal(syscall.SIGINT)
		if !c.wait(10 * time.Second) {
			t.Fatal("masque up did not exit on SIGINT")
		}
	}

	c := tp.startClient(t, tp.client, tokenAuth("alice"), "--log-level", "debug")
	if l := dnsApplied(c); !strings.Contains(l, "mode=resolv.conf") {
		t.Errorf("--dns-mode auto in a namespace of its own: %q, want mode=resolv.conf", l)
	}
	if !strings.Contains(c.stderr.String(), "another network namespace") {
		t.Errorf("--dns-mode auto did not say why it left resolved alone; client log:\n%s", tail(c.stderr.String(), 2000))
	}
	stop(c)
	if calls := fake.Calls(); len(calls) != 0 {
		t.Errorf("--dns-mode auto called the host namespace's resolved: %+v", calls)
	}
	if got := resolvConf(); got != orig {
		t.Errorf("resolv.conf after masque up exited:\n%q\nwant the original:\n%q", got, orig)
	}

	c = tp.startClient(t, tp.client, tokenAuth("alice"), "--dns-mode", "resolved")
	if l := dnsApplied(c); !strings.Contains(l, "mode=resolved") {
		t.Errorf("--dns-mode resolved: %q, want mode=resolved", l)
	}
	r := runIn(t, tp.client, 10*time.Second, "cat", "/sys/class/net/"+c.up.tun+"/ifindex")
	ifindex, err := strconv.Atoi(strings.TrimSpace(r.stdout))
	if err != nil {
		t.Fatalf("ifindex of %s: %q: %v", c.up.tun, r.stdout, err)
	}
	i := int32(ifindex)
	want := []resolvedtest.Call{
		{Method: "SetLinkDNS", Ifindex: i, Arg: []resolvedtest.Addr{
			{Family: 2, Address: netip.MustParseAddr("198.18.2.53").AsSlice()},
			{Family: 10, Address: netip.MustParseAddr("2001:db8:2::53").AsSlice()},
		}},
		{Method: "SetLinkDomains", Ifindex: i, Arg: []resolvedtest.Domain{{Name: "~.", RoutingOnly: true}}},
		{Method: "SetLinkDefaultRoute", Ifindex: i, Arg: true},
	}
	if diff := cmp.Diff(want, fake.Calls()); diff != "" {
		t.Errorf("calls to resolved while up (-want +got):\n%s", diff)
	}
	if got := resolvConf(); got != orig {
		t.Errorf("resolv.conf changed in resolved mode:\n%q", got)
	}
	fake.Reset()
	stop(c)
	wantRevert := []resolvedtest.Call{{Method: "RevertLink", Ifindex: i}}
	if diff := cmp.Diff(wantRevert, fake.Calls()); diff != "" {
		t.Errorf("calls to resolved on exit (-want +got):\n%s", diff)
	}

	// After a crash the kernel has deleted the TUN, and with it resolved
	// the link's settings; masque down has nothing to revert but must
	// accept the state.
	c = tp.startClient(t, tp.client, tokenAuth("alice"), "--dns-mode", "resolved")
	dnsApplied(c)
	c.wantExit0 = false
	c.signal(syscall.SIGKILL)
	if !c.wait(5 * time.Second) {
		t.Fatal("masque up survived SIGKILL")
	}
	if r := runIn(t, tp.client, 20*time.Second, env.masque, "down", "--state-dir", c.stateDir); r.code != 0 {
		t.Fatalf("masque down: exit %d: %s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(c.stateDir, "state.json")); !os.IsNotExist(err) {
		t.Errorf("state file after masque down: %v", err)
	}
}
