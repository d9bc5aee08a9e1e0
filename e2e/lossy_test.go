package e2e

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLossyPath: the client reaches masqued through a relay that duplicates
// 2% and reorders 5% of the datagrams each way, and nftables drops 5% each
// way (numgen random). A 50 MB TCP transfer through the tunnel arrives
// byte-exact and the tunnel is never torn down.
func TestLossyPath(t *testing.T) {
	tp := newTopo(t, false)
	srv := tp.startServer(t)
	// The relay listens on the server's other address with masqued's port
	// (masqued checks the request's authority port); the client names the
	// certificate's address for TLS.
	const relayAddr = egressIP4 + ":4433"
	relay := startTool(t, tp.server, "udprelay", "-listen", relayAddr, "-to", serverAddr, "-dup", "0.02", "-reorder", "0.05", "-timeout", "3m")
	for _, side := range []struct{ ns, match string }{{tp.server, "ip daddr " + egressIP4 + " udp dport 4433"}, {tp.client, "ip saddr " + egressIP4 + " udp sport 4433"}} {
		for _, cmd := range []string{
			"add table inet e2e_loss",
			"add chain inet e2e_loss in { type filter hook input priority -10 ; }",
			"add rule inet e2e_loss in " + side.match + " numgen random mod 100 < 5 counter drop",
		} {
			if r := runIn(t, side.ns, 10*time.Second, append([]string{"nft"}, strings.Fields(cmd)...)...); r.code != 0 {
				t.Fatalf("nft %s: %s", cmd, r.stderr)
			}
		}
		ns := side.ns
		t.Cleanup(func() { runIn(t, ns, 10*time.Second, "nft", "delete", "table", "inet", "e2e_loss") })
	}
	c := tp.startClient(t, tp.client, tokenAuth("alice"), "--server", relayAddr, "--server-name", serverIP4)

	size := 50 << 20
	if testing.Short() {
		size = 5 << 20
	}
	sink := startTool(t, tp.target, "tcpsink", "-listen", targetIP4+":9100", "-timeout", "150s")
	send := runIn(t, tp.client, 150*time.Second, env.nettool, "tcpsend", "-to", targetIP4+":9100", "-bytes", strconv.Itoa(size), "-timeout", "140s")
	if send.code != 0 {
		t.Fatalf("tcpsend over the lossy path: exit %d after %v\n%s%s", send.code, send.took, send.stdout, send.stderr)
	}
	if !sink.wait(10 * time.Second) {
		t.Fatal("tcpsink did not finish")
	}
	var sent, got struct {
		Bytes   int64   `json:"bytes"`
		SHA256  string  `json:"sha256"`
		Seconds float64 `json:"seconds"`
	}
	lastJSON(t, "tcpsend", send.stdout, &sent)
	lastJSON(t, "tcpsink", sink.stdout.String(), &got)
	if got.Bytes != sent.Bytes || got.SHA256 != sent.SHA256 || sent.Bytes != int64(size) {
		t.Errorf("over the lossy path the target got %d bytes %s, the client sent %d bytes %s", got.Bytes, got.SHA256, sent.Bytes, sent.SHA256)
	}
	t.Logf("%d MB over 5%% loss, 5%% reorder, 2%% duplication each way: %.1f s, %.0f Mbit/s", size>>20, sent.Seconds, float64(size)*8/sent.Seconds/1e6)
	if st := c.status(t); st.Reconnects != 0 || st.State != "up" {
		t.Errorf("after the lossy transfer: state %q, %d reconnects; want up, 0", st.State, st.Reconnects)
	}
	if n := srv.sessions(t); n != 1 {
		t.Errorf("masqued has %v sessions, want 1", n)
	}
	for _, ns := range []string{tp.server, tp.client} {
		out := runIn(t, ns, 10*time.Second, "nft", "list", "table", "inet", "e2e_loss").stdout
		m := regexp.MustCompile(`counter packets (\d+)`).FindStringSubmatch(out)
		if m == nil || m[1] == "0" {
			t.Errorf("the loss rule in %s dropped nothing:\n%s", ns, out)
		} else {
			t.Logf("loss rule in %s dropped %s datagrams", ns, m[1])
		}
	}
	relay.stop(5 * time.Second)
	var rc struct{ Relayed, Duplicated, Reordered uint64 }
	lastJSON(t, "udprelay", relay.stdout.String(), &rc)
	t.Logf("relay: %+v", rc)
	if rc.Duplicated == 0 || rc.Reordered == 0 || rc.Relayed < 1000 {
		t.Errorf("the relay did not do its job: %+v", rc)
	}
}
