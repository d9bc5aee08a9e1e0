package e2e

import (
	"regexp"
	"strconv"
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
	nftInputDrop(t, tp.server, "e2e_loss", "ip daddr "+egressIP4+" udp dport 4433 numgen random mod 100 < 5 counter drop")
	nftInputDrop(t, tp.client, "e2e_loss", "ip saddr "+egressIP4+" udp sport 4433 numgen random mod 100 < 5 counter drop")
	c := tp.startClient(t, tp.client, tokenAuth("alice"), "--server", relayAddr, "--server-name", serverIP4)

	size := 50 << 20
	if testing.Short() {
		size = 5 << 20
	}
	sink := startTool(t, tp.target, "tcpsink", "-listen", targetIP4+":9100", "-timeout", "150s")
	send := runIn(t, tp.client, 150*time.Second, env.nettool, "tcpsend", "-to", targetIP4+":9100", "-bytes", strconv.Itoa(size), "-timeout", "140s")
	sent, _ := checkTransfer(t, "over the lossy path", send, sink, int64(size))
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
