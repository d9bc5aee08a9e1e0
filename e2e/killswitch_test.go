package e2e

import (
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestKillSwitchBlocksInjectedRoute: a more specific route on the physical
// interface pulls traffic out of a full tunnel, the classic leak; and the
// resolver the host used before the tunnel (its LAN gateway) stays
// reachable outside it through the LAN route, the classic DNS leak. With
// the kill switch (on by default for a full tunnel) not one packet of TCP,
// UDP, DNS or ICMP leaves c0 outside the tunnel's own flow, IPv4 or IPv6,
// while the DNS servers that masqued pushes answer through the tunnel; the
// table is gone once the client stops. The control run with
// --kill-switch=false shows that every kind leaks, so the capture can see
// a leak.
func TestKillSwitchBlocksInjectedRoute(t *testing.T) {
	tp := newTopo(t, false)
	// The tunnel's DNS server sits beside the target; the host's own
	// resolver is its LAN gateway.
	const tunnelDNS4, tunnelDNS6 = "198.18.2.53", "2001:db8:2::53"
	mustRun(t, "ip", "-n", tp.target, "addr", "add", tunnelDNS4+"/32", "dev", "t0")
	mustRun(t, "ip", "-n", tp.target, "addr", "add", tunnelDNS6+"/128", "dev", "t0", "nodad")
	serveDNS(t, tp.target, tunnelDNS4+":53", map[string]netip.Addr{"www.masque.test.": netip.MustParseAddr(targetIP4)})
	resolvConf(t, tp.client, lanIP4)
	tp.startServer(t, "--dns", tunnelDNS4, "--dns", tunnelDNS6)
	inject := func(add bool) {
		verb := "add"
		if !add {
			verb = "del"
		}
		mustRun(t, "ip", "-n", tp.client, "route", verb, targetIP4+"/32", "via", serverIP4, "dev", "c0")
		mustRun(t, "ip", "-n", tp.client, "-6", "route", verb, targetIP6+"/128", "via", "2001:db8:1::2", "dev", "c0")
	}
	leaks := func(extra ...string) (leaked []string, answered map[string]int, tables string) {
		c := tp.startClient(t, tp.client, tokenAuth("alice"), extra...)
		waitUntil(t, "resolv.conf pointed at the tunnel's DNS servers", 10*time.Second, func() bool {
			return strings.Contains(runIn(t, tp.client, 10*time.Second, "cat", "/etc/resolv.conf").stdout, "nameserver "+tunnelDNS4)
		})
		inject(true)
		dump := startCapture(t, tp.client, leakFilter, false)
		answered = probeOutside(t, tp.client, targetIP4, targetIP6, lanIP4, lanIP6)
		// The system resolver now asks the tunnel's DNS server, through
		// the tunnel.
		lookup := runIn(t, tp.client, 15*time.Second, "getent", "ahostsv4", "www.masque.test")
		leaked = stopCapture(dump)
		t.Logf("%v: probes to the injected routes and the LAN resolver answered: %s", extra, kindsString(answered))
		if !strings.Contains(lookup.stdout, targetIP4) {
			t.Errorf("%v: getent ahostsv4 www.masque.test through the tunnel's DNS server: exit %d, %q, want %s", extra, lookup.code, lookup.stdout, targetIP4)
		}
		tables = runIn(t, tp.client, 10*time.Second, "nft", "list", "tables").stdout
		inject(false)
		c.signal(syscall.SIGINT) // masque up restores everything
		if !c.wait(10 * time.Second) {
			t.Fatal("masque up did not exit on SIGINT")
		}
		return leaked, answered, tables
	}

	got, _, _ := leaks("--kill-switch=false")
	checkCaptureSeesAll(t, "control without the kill switch", got)

	got, answered, tables := leaks()
	checkNoLeak(t, "kill switch on, injected routes and the LAN resolver", got)
	for _, k := range probeKinds {
		if answered[k] != 0 {
			t.Errorf("kill switch on: %d %s probes outside the tunnel answered, want 0", answered[k], k)
		}
	}
	if !strings.Contains(tables, "masque_killswitch") {
		t.Errorf("no kill switch table while the tunnel was up:\n%s", tables)
	}
	if tables := runIn(t, tp.client, 10*time.Second, "nft", "list", "tables").stdout; strings.Contains(tables, "masque_killswitch") {
		t.Errorf("kill switch table left after masque up exited:\n%s", tables)
	}
}

// TestKillSwitchIPv4OnlyTunnel: on a dual-stack host, a tunnel with only an
// IPv4 address routes no IPv6; the kill switch blocks IPv6 (TCP, UDP, DNS
// and ICMPv6, to the target and to the LAN) instead of letting it out of
// the physical interface. Without it (the control) every kind does leave
// c0.
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
		answered := probeOutside(t, tp.client, targetIP6, lanIP6)
		if r := ping(t, tp.client, targetIP4, 3); r.received != 3 {
			t.Errorf("IPv4 through the IPv4-only tunnel: %d of 3 answered", r.received)
		}
		got := stopCapture(dump)
		t.Logf("%v: IPv6 probes answered: %s", extra, kindsString(answered))
		c.signal(syscall.SIGINT)
		if !c.wait(10 * time.Second) {
			t.Fatal("masque up did not exit on SIGINT")
		}
		return got
	}
	checkCaptureSeesAll(t, "control without the kill switch", leaked("--kill-switch=false"))
	checkNoLeak(t, "IPv6 beside an IPv4-only tunnel, kill switch on", leaked())
}
