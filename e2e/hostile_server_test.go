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
