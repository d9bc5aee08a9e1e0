package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// blastResult is one one-way blast: what the sender sent and what the sink
// in the target namespace received.
type blastResult struct {
	sent, received int64
	seconds        float64
}

func (r blastResult) String() string {
	loss := 0.0
	if r.sent > 0 {
		loss = 100 * float64(r.sent-r.received) / float64(r.sent)
	}
	return fmt.Sprintf("sent %.0f/s, delivered %.0f/s, loss %.2f%%", float64(r.sent)/r.seconds, float64(r.received)/r.seconds, loss)
}

// blast sends datagrams of size bytes from c for d, at most pps per second
// (0: as fast as the socket takes them), and counts what the sink's
// counter for tag saw half a second after the last one. The first payload
// byte is the tag, so that stragglers of another run do not count.
func blast(c *net.UDPConn, counts *[256]atomic.Int64, tag byte, size, pps int, d time.Duration) blastResult {
	p := make([]byte, size)
	p[0] = tag
	start := time.Now()
	var sent int64
	var interval time.Duration
	if pps > 0 {
		interval = time.Second / time.Duration(pps)
	}
	next := start
	for time.Since(start) < d {
		if interval > 0 {
			// Send in bursts of up to 1 ms worth, then sleep: a timer per
			// datagram is too coarse at these rates.
			now := time.Now()
			if now.Before(next) {
				time.Sleep(next.Sub(now))
			}
			next = next.Add(interval)
		}
		if _, err := c.Write(p); err == nil {
			sent++
		}
	}
	secs := time.Since(start).Seconds()
	time.Sleep(500 * time.Millisecond)
	return blastResult{sent: sent, received: counts[tag].Load(), seconds: secs}
}

// udpKernelDrops returns the UDP receive-buffer errors of namespace ns
// (/proc/net/snmp Udp: RcvbufErrors).
func udpKernelDrops(t *testing.T, ns string) uint64 {
	t.Helper()
	r := runIn(t, ns, 5*time.Second, "cat", "/proc/net/snmp")
	var hdr []string
	for _, l := range strings.Split(r.stdout, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if hdr == nil {
			hdr = f
			continue
		}
		for i, h := range hdr {
			if h == "RcvbufErrors" && i < len(f) {
				v, _ := strconv.ParseUint(f[i], 10, 64)
				return v
			}
		}
	}
	return 0
}

// TestUDPBench measures datagrams per second and loss through masque udp
// and masqued next to the direct routed path, in the same run and topology:
// one-way 1200-byte datagrams from the client namespace to a counting sink
// in the target namespace, unpaced and at a fixed rate. It only reports.
func TestUDPBench(t *testing.T) {
	if testing.Short() {
		t.Skip("benchmark; skipped with -short")
	}
	tp := newTopo(t, false)
	srv := tp.startServer(t)
	var counts [256]atomic.Int64
	serveUDP(t, tp.target, targetIP4+":7100", func(b []byte, _ netip.AddrPort) []byte {
		if len(b) > 0 {
			counts[b[0]].Add(1)
		}
		return nil
	})
	f := startUDPForwarder(t, tp.client, serverAddr, 1, append(tokenAuth("alice"),
		"--listen", "127.0.0.1:0", "--target", targetIP4+":7100")...)
	viaForwarder := dialUDPIn(t, tp.client, f.listens[0])
	direct := dialUDPIn(t, tp.client, targetIP4+":7100") // routed by the server namespace

	const size = 1200
	const d = 2 * time.Second
	runs := []struct {
		name string
		c    *net.UDPConn
		pps  int
	}{
		{"direct, unpaced", direct, 0},
		{"forwarder, unpaced", viaForwarder, 0},
		{"direct, 20000/s", direct, 20000},
		{"forwarder, 20000/s", viaForwarder, 20000},
	}
	results := make([]blastResult, len(runs))
	for i, r := range runs {
		st0, m0 := f.status(t), srv.metrics(t)
		k0 := udpKernelDrops(t, tp.client) + udpKernelDrops(t, tp.server)
		results[i] = blast(r.c, &counts, byte(i+1), size, r.pps, d)
		st1, m1 := f.status(t), srv.metrics(t)
		k1 := udpKernelDrops(t, tp.client) + udpKernelDrops(t, tp.server)
		up := metricOr0(m1, "masque_udp_datagrams_total", `direction="up"`) - metricOr0(m0, "masque_udp_datagrams_total", `direction="up"`)
		t.Logf("udp bench %-20s %v (forwarder sent %d to the server, server forwarded %.0f, UDP receive-buffer drops in client+server %d)",
			r.name+":", results[i], st1.TxPackets-st0.TxPackets, up, k1-k0)
		if results[i].received == 0 {
			t.Errorf("%s: nothing arrived", r.name)
		}
	}
	st := f.status(t)
	t.Logf("udp bench summary (%d-byte datagrams, %v per run): direct %v | masque udp %v | at 20000/s: direct %v | masque udp %v; forwarder drops %v",
		size, d, results[0], results[1], results[2], results[3], st.Drops)
}
