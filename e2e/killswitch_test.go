package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestKillSwitchBlocksInjectedRoute: a more specific route on the physical
// interface pulls traffic out of a full tunnel, the classic leak; with the
// kill switch (on by default for a full tunnel) not one packet leaves c0
// outside the tunnel's own flow, IPv4 or IPv6, and the table is gone once
// the client stops. The control run with --kill-switch=false shows that
// the injected routes do leak, so the capture can see a leak.
func TestKillSwitchBlocksInjectedRoute(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	inject := func(add bool) {
		verb := "add"
		if !add {
			verb = "del"
		}
		mustRun(t, "ip", "-n", tp.client, "route", verb, targetIP4+"/32", "via", serverIP4, "dev", "c0")
		mustRun(t, "ip", "-n", tp.client, "-6", "route", verb, targetIP6+"/128", "via", "2001:db8:1::2", "dev", "c0")
	}
	leaks := func(extra ...string) ([]string, string) {
		c := tp.startClient(t, tp.client, tokenAuth("alice"), extra...)
		inject(true)
		dump := startCapture(t, tp.client, leakFilter, false)
		p4 := ping(t, tp.client, targetIP4, 3)
		p6 := ping(t, tp.client, targetIP6, 3)
		time.Sleep(300 * time.Millisecond)
		dump.stop(5 * time.Second)
		tables := runIn(t, tp.client, 10*time.Second, "nft", "list", "tables").stdout
		inject(false)
		c.signal(syscall.SIGINT) // masque up restores everything
		if !c.wait(10 * time.Second) {
			t.Fatal("masque up did not exit on SIGINT")
		}
		return nonEmptyLines(dump.stdout.String()), p4.out + p6.out + "\n" + tables
	}

	got, _ := leaks("--kill-switch=false")
	if len(got) == 0 {
		t.Fatal("control: without the kill switch the injected routes leaked nothing: the capture does not work")
	}
	t.Logf("control: %d packets left c0 through the injected routes without the kill switch", len(got))

	got, out := leaks()
	if len(got) > 0 {
		t.Errorf("%d packets left c0 outside the tunnel with the kill switch on:\n%s", len(got), tail(strings.Join(got, "\n"), 3000))
	}
	if !strings.Contains(out, "masque_killswitch") {
		t.Errorf("no kill switch table while the tunnel was up:\n%s", out)
	}
	if tables := runIn(t, tp.client, 10*time.Second, "nft", "list", "tables").stdout; strings.Contains(tables, "masque_killswitch") {
		t.Errorf("kill switch table left after masque up exited:\n%s", tables)
	}
}

// TestKillSwitchIPv4OnlyTunnel: on a dual-stack host, a tunnel with only an
// IPv4 address routes no IPv6; the kill switch blocks IPv6 instead of
// letting it out of the physical interface. Without it (the control) IPv6
// to the target does leave c0.
func TestKillSwitchIPv4OnlyTunnel(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t, "--pool6", "off")
	filter := "ip6 and not (src net fe80::/10 or dst net ff02::/16 or (icmp6 and ip6[40] >= 133 and ip6[40] <= 137))"
	leaked := func(extra ...string) []string {
		c := tp.startClient(t, tp.client, tokenAuth("alice"), extra...)
		if c.up.addr6().IsValid() {
			t.Fatalf("the server without an IPv6 pool assigned %v", c.up.addr6())
		}
		dump := startCapture(t, tp.client, filter, true)
		ping(t, tp.client, targetIP6, 3)
		if r := ping(t, tp.client, targetIP4, 3); r.received != 3 {
			t.Errorf("IPv4 through the IPv4-only tunnel: %d of 3 answered", r.received)
		}
		time.Sleep(300 * time.Millisecond)
		dump.stop(5 * time.Second)
		c.signal(syscall.SIGINT)
		if !c.wait(10 * time.Second) {
			t.Fatal("masque up did not exit on SIGINT")
		}
		return nonEmptyLines(dump.stdout.String())
	}
	if got := leaked("--kill-switch=false"); len(got) == 0 {
		t.Fatal("control: without the kill switch no IPv6 left c0: the capture does not work")
	}
	if got := leaked(); len(got) > 0 {
		t.Errorf("%d IPv6 packets left c0 beside an IPv4-only tunnel with the kill switch on:\n%s", len(got), tail(strings.Join(got, "\n"), 3000))
	}
}
