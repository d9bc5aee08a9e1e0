package e2e

// A hostile server's assignment (issue 14): h3attack serve sends crafted
// addresses, routes and DNS servers to the real masque up, in a client
// namespace whose LAN is 198.18.1.0/24 (the server's address is on it).

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// maxClientRoutes is the client's cap on the routes it takes from a server
// (tunnel.MaxRoutes); the tunnel's table holds them plus a few throw
// routes (the LAN, the server).
const maxClientRoutes = 1024

// TestHostileAssignmentRefused: masque up refuses an assignment inside its
// LAN, one of multicast and one of the server's own address, with one
// line, and leaves the host as it was.
func TestHostileAssignmentRefused(t *testing.T) {
	tp := newTopo(t, false)
	for _, tt := range []struct{ assign, why string }{
		{"198.18.1.128/25", "the host's own or connected network"},
		{"224.0.0.0/4", "multicast"},
		{"198.18.1.2/32", "the server's address"},
	} {
		srv := tp.startRogueServer(t, "-assign", tt.assign, "-routes", "0.0.0.0/0")
		stateDir := t.TempDir()
		c := startProc(t, tp.client, "masque up", clientArgv(stateDir, tokenAuth("alice"))...)
		if !c.wait(20 * time.Second) {
			t.Fatalf("assigned %s: masque up still runs", tt.assign)
		}
		if c.exitCode() != 1 || !strings.Contains(c.stderr.String(), "address assignment refused: "+tt.assign+" ("+tt.why+")") {
			t.Errorf("assigned %s: masque up %s, want exit 1 saying it was refused as %s; stderr:\n%s", tt.assign, c.exitString(), tt.why, tail(c.stderr.String(), 2000))
		}
		if hint := strings.Contains(c.stderr.String(), "--allow-local-overlap"); hint != (tt.why == "the host's own or connected network") {
			t.Errorf("assigned %s: the error names --allow-local-overlap: %v, want it only for the LAN", tt.assign, hint)
		}
		if strings.Contains(c.stdout.String(), "up: ") {
			t.Errorf("assigned %s: the tunnel came up", tt.assign)
		}
		tp.checkClean(tp.client)
		srv.stop(5 * time.Second)
	}
}

// TestHostileRoutesAndDNS: a prefix assigned becomes a host address (no
// route for the prefix in the main table), a protocol-scoped range is not
// routed, a flood of ranges is capped (200 more advertisements of 1,900
// ranges each, 12 MB, cost the client its cap and little memory), and
// only the DNS server routed through the tunnel reaches resolv.conf.
func TestHostileRoutesAndDNS(t *testing.T) {
	tp := newTopo(t, false)
	orig := "# the client host's own resolver\nnameserver 192.0.2.53\n"
	resolvConf := clientResolvConf(t, tp, orig)
	tp.startRogueServer(t,
		"-assign", "100.64.0.0/16,fd6d:6173:7175:6500::/64",
		"-routes", "198.18.2.0-198.18.2.255,172.16.0.0-172.31.255.255/p17",
		"-flood6", "1900", // a 64 KiB capsule
		"-route-flood", "200",
		"-dns", "127.0.0.53,198.18.1.9,224.0.0.251,fe80::1,198.18.2.53,2001:db8:9::53")
	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	if got := c.up.addr4().String(); got != "100.64.0.0" {
		t.Errorf("IPv4 address %s, want 100.64.0.0", got)
	}
	tun := c.up.tun
	if r := runIn(t, tp.client, 5*time.Second, "ip", "-o", "addr", "show", "dev", tun); !strings.Contains(r.stdout, "100.64.0.0/32") || !strings.Contains(r.stdout, "fd6d:6173:7175:6500::/128") {
		t.Errorf("TUN addresses, want host addresses only:\n%s", r.stdout)
	}
	for _, fam := range []string{"-4", "-6"} {
		r := runIn(t, tp.client, 5*time.Second, "ip", fam, "route", "show", "table", "main", "dev", tun)
		for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			if l != "" && !strings.HasPrefix(l, "fe80::/64") {
				t.Errorf("main table route through the TUN: %q", l)
			}
		}
	}
	v4 := runIn(t, tp.client, 5*time.Second, "ip", "-4", "route", "show", "table", "0x4d51").stdout
	v6 := runIn(t, tp.client, 5*time.Second, "ip", "-6", "route", "show", "table", "0x4d51").stdout
	n := strings.Count(v4, "\n") + strings.Count(v6, "\n")
	if n > maxClientRoutes+8 {
		t.Errorf("%d routes in the tunnel's table, want at most %d and a few throw routes", n, maxClientRoutes)
	}
	if !strings.Contains(v4, "198.18.2.0/24 dev "+tun) {
		t.Errorf("the advertised 198.18.2.0/24 is not routed into the tunnel:\n%s", v4)
	}
	if strings.Contains(v4, "172.16.0.0/12") {
		t.Errorf("the UDP-only range 172.16.0.0/12 is routed for every protocol:\n%s", v4)
	}
	// The flood has been read once the counters say so: 201
	// advertisements, each with one UDP-only range and 1,900 ranges of
	// which at most MaxRoutes fit.
	var st status
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		st = c.status(t)
		if st.Refused["routes_protocol_scoped"] >= 201 || time.Now().After(deadline) {
			break
		}
	}
	rss, err := vmRSS(c.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("route flood: refused %v; %d routes in the tunnel's table; masque up RSS %.1f MB", st.Refused, n, float64(rss)/(1<<20))
	if st.Refused["routes_protocol_scoped"] != 201 || st.Refused["routes_over_cap"] < 201*(1900-maxClientRoutes) {
		t.Errorf("status refused %v, want routes_protocol_scoped=201 and routes_over_cap at least %d", st.Refused, 201*(1900-maxClientRoutes))
	}
	if rss > 96<<20 {
		t.Errorf("masque up RSS %.1f MB after the route flood, want at most 96 MB", float64(rss)/(1<<20))
	}
	if st.Refused["dns_servers"] != 5 {
		t.Errorf("status refused dns_servers=%d, want the 5 bad servers of one DNS_ASSIGN", st.Refused["dns_servers"])
	}
	for _, want := range []string{"throw 198.18.1.0/24", "throw 198.18.1.2"} {
		if !strings.Contains(v4, want) {
			t.Errorf("no %q in the tunnel's table:\n%s", want, v4)
		}
	}
	if l := c.stderr.String(); !strings.Contains(l, "routes from the server refused") || !strings.Contains(l, "protocol_scoped=1") || !strings.Contains(l, "dns servers from the server refused") {
		t.Errorf("no refusal lines in the client's log:\n%s", tail(l, 3000))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := resolvConf()
		if strings.Contains(got, "nameserver 198.18.2.53\n") {
			for _, bad := range []string{"127.0.0.53", "198.18.1.9", "224.0.0.251", "fe80::1", "2001:db8:9::53"} {
				if strings.Contains(got, bad) {
					t.Errorf("resolv.conf names %s:\n%s", bad, got)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("resolv.conf not pointed at 198.18.2.53:\n%s\nclient log:\n%s", got, tail(c.stderr.String(), 2000))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, killed := c.stop(10 * time.Second); killed {
		t.Fatal("masque up ignored SIGTERM")
	}
	if got := resolvConf(); got != orig {
		t.Errorf("resolv.conf after masque up exited:\n%q\nwant %q", got, orig)
	}
	tp.checkClean(tp.client)
}

// TestHostileRoutesLater: routes a server advertises mid-session replace
// the installed ones, inside the policy (--route cuts them as it cut the
// first), within a second or so.
func TestHostileRoutesLater(t *testing.T) {
	tp := newTopo(t, false)
	tp.startRogueServer(t, "-assign", "100.64.0.2/32",
		"-routes", "198.18.2.0-198.18.2.255",
		"-routes-later", "0.0.0.0-255.255.255.255", "-routes-later-after", "1s")
	c := tp.startClient(t, tp.client, tokenAuth("alice"), "--route", "198.18.2.0/24", "--route", "198.18.4.0/23")
	table := func() string {
		return runIn(t, tp.client, 5*time.Second, "ip", "-4", "route", "show", "table", "0x4d51").stdout
	}
	if got := table(); !strings.Contains(got, "198.18.2.0/24 dev "+c.up.tun) || strings.Contains(got, "198.18.4.0/23") {
		t.Fatalf("first routes:\n%s", got)
	}
	var got string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if got = table(); strings.Contains(got, "198.18.4.0/23") {
			break
		}
	}
	// 0.0.0.0/0 cut to the two --route prefixes: nothing else.
	if !strings.Contains(got, "198.18.2.0/24 dev "+c.up.tun) || !strings.Contains(got, "198.18.4.0/23 dev "+c.up.tun) || strings.Contains(got, "default") {
		t.Errorf("routes after the second advertisement (0.0.0.0/0, --route 198.18.2.0/24 and 198.18.4.0/23):\n%s", got)
	}
	if st := c.status(t); !slices.Contains(st.Routes, "198.18.4.0/23") {
		t.Errorf("status routes %v lack the new route", st.Routes)
	}
}
