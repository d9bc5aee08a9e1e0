package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestTTLExceeded: the server is a hop. A packet from a client with TTL
// (hop limit) 1 expires there and the client gets ICMP Time Exceeded from
// the server, over IPv4 and IPv6; with 2 it reaches the target, one hop
// beyond. (The server's kernel forwards between its TUN and the egress
// and does the decrementing; the test pins that down.)
func TestTTLExceeded(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	tp.startClient(t, tp.client, tokenAuth("alice"))
	for _, tc := range []struct {
		dst, flag, want string
	}{
		{targetIP4, "-t", "Time to live exceeded"},
		{targetIP6, "-t", "Time exceeded: Hop limit"},
	} {
		r := runIn(t, tp.client, 10*time.Second, "ping", "-n", "-c", "1", "-W", "2", tc.flag, "1", tc.dst)
		if !strings.Contains(r.stdout+r.stderr, tc.want) {
			t.Errorf("ping %s 1 %s: want %q from the server\n%s%s", tc.flag, tc.dst, tc.want, r.stdout, r.stderr)
		} else {
			t.Logf("ping %s 1 %s: %s", tc.flag, tc.dst, firstLine(r.stdout, tc.want))
		}
		if r := runIn(t, tp.client, 10*time.Second, "ping", "-n", "-c", "1", "-W", "2", tc.flag, "2", tc.dst); !strings.Contains(r.stdout, " 1 received") {
			t.Errorf("ping %s 2 %s: want an answer from the target, one hop past the server\n%s%s", tc.flag, tc.dst, r.stdout, r.stderr)
		}
	}
}
