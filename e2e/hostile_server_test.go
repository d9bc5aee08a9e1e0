package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The hostile CONNECT-IP server of issue 14 (h3attack serve) against the
// real masque up in the client namespace.

// startRogueServer runs h3attack serve in the server namespace on the
// test server's address and certificate, with extra flags, and waits for
// it to listen.
func (tp *topo) startRogueServer(t *testing.T, extra ...string) *proc {
	t.Helper()
	argv := append([]string{env.h3attack, "serve", "-listen", serverAddr,
		"-cert", filepath.Join(env.certDir, "server.crt"), "-key", filepath.Join(env.certDir, "server.key"),
		"-duration", "90s"}, extra...)
	p := startProc(t, tp.server, "h3attack serve", argv...)
	if _, err := p.waitLine(p.stdout, 10*time.Second, func(l string) bool { return strings.Contains(l, `"event":"listening"`) }); err != nil {
		t.Fatalf("h3attack serve did not listen: %v\n%s", err, tail(p.stderr.String(), 2000))
	}
	return p
}

// rogueConns counts the connections a rogue server has accepted.
func rogueConns(p *proc) int { return strings.Count(p.stdout.String(), `"event":"conn"`) }

// TestHostileServerLoops: a server that sends GOAWAY right after every
// session, or closes every connection right after set-up, meets the
// client's backoff like failed dials do: a handful of connections in 20 s
// (before: 1,183 in 15 s for the GOAWAY loop, 644 for the close loop), and
// the client keeps its tunnel state (kill switch) and exits cleanly.
func TestHostileServerLoops(t *testing.T) {
	// 1 s, 2, 4, 8, 16 s ±25% after the first two: at most 7 in 20 s.
	const window, budget = 20 * time.Second, 8
	for _, tc := range []struct{ name, flag string }{
		{"GOAWAY after each session", "-goaway-after=100ms"},
		{"close soon after each set-up", "-close-after=300ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp := newTopo(t, false)
			srv := tp.startRogueServer(t, tc.flag)
			c := tp.startClient(t, tp.client, tokenAuth("alice"))
			start := rogueConns(srv)
			time.Sleep(window)
			n := rogueConns(srv) - start
			t.Logf("%s: %d connections in %v after the first session", tc.name, n, window)
			if n > budget {
				t.Errorf("%s: %d connections in %v, want at most %d", tc.name, n, window, budget)
			}
			if c.exited() {
				t.Fatalf("masque up exited: %s\n%s", c.exitString(), tail(c.stderr.String(), 2000))
			}
			if !hasKillSwitch(ruleset(t, tp.client)) {
				t.Errorf("%s: kill switch gone while the client reconnects", tc.name)
			}
		})
	}
}

// TestHostileServerPackets: what a hostile server sends into the tunnel
// does not configure the host or pass as local traffic. Router
// advertisements (a default route via fe80::1, an on-link 2000::/3, a
// SLAAC prefix) change no address or route; packets from a link-local
// source, from the client's connected network and from the client's own
// address are dropped and counted.
func TestHostileServerPackets(t *testing.T) {
	tp := newTopo(t, false)
	tp.startRogueServer(t,
		"-assign", "100.64.0.2/32,fd6d:6173:7175:6500::2/128",
		"-inject", "ra,src=fe80::77,src=198.18.1.77,src=100.64.0.2,src=2001:db8:1::77",
		"-inject-every", "100ms")
	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	time.Sleep(3 * time.Second)
	addrs := runIn(t, tp.client, 10*time.Second, "ip", "-6", "addr", "show", "dev", "masque0").stdout
	for _, bad := range []string{"2001:db8:77:", "fe80:"} {
		if strings.Contains(addrs, bad) {
			t.Errorf("the TUN has an address %s… after the server's router advertisements:\n%s", bad, addrs)
		}
	}
	routes := runIn(t, tp.client, 10*time.Second, "ip", "-6", "route", "show", "table", "all").stdout
	for _, bad := range []string{"2000::/3", "via fe80::1", "2001:db8:77::/64"} {
		if strings.Contains(routes, bad) {
			t.Errorf("a route %q after the server's router advertisements:\n%s", bad, routes)
		}
	}
	st := c.status(t)
	t.Logf("client drops: %v", st.Drops)
	// The link-local sources (the RAs' fe80::1 among them: an RA to
	// ff02::1 may also be dropped first as addressed to no one of the
	// client's) are bogus; the LAN's and the client's own are local.
	for _, reason := range []string{"source_bogus", "source_local"} {
		if st.Drops[reason] == 0 {
			t.Errorf("no %s drops after 3 s of injected packets; drops %v", reason, st.Drops)
		}
	}
}
