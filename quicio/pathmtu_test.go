package quicio

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// forget clears m (tests share the process's clientPaths).
func (m *pathMemory) forget() {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.small)
}

func TestInitialPacketSize(t *testing.T) {
	for _, tc := range []struct {
		payload int
		small   bool
		want    uint16
	}{
		{0, false, DefaultInitialPacketSize},     // route unknown
		{1472, false, DefaultInitialPacketSize},  // Ethernet
		{65508, false, DefaultInitialPacketSize}, // loopback
		{1252, false, 1252},                      // IPv4 over a 1280 link
		{1232, false, 1232},                      // IPv6 over a 1280 link
		{1000, false, MinPacketSize},             // below what QUIC allows: try anyway
		{1472, true, MinPacketSize},              // the path shrank before
		{1252, true, MinPacketSize},
	} {
		if got := initialPacketSize(tc.payload, tc.small); got != tc.want {
			t.Errorf("initialPacketSize(%d, %v) = %d, want %d", tc.payload, tc.small, got, tc.want)
		}
	}
}

func TestPathMemory(t *testing.T) {
	m := newPathMemory()
	now := time.Unix(1e9, 0)
	m.now = func() time.Time { return now }
	a := netip.MustParseAddr("198.18.1.1")
	if m.isSmall(a) {
		t.Fatal("a fresh memory knows a small path")
	}
	m.remember(netip.MustParseAddr("::ffff:198.18.1.1")) // as a dual-stack socket reports it
	if !m.isSmall(a) {
		t.Error("the remembered peer (IPv4-mapped) is not small")
	}
	now = now.Add(smallPathTTL + time.Second)
	if m.isSmall(a) {
		t.Errorf("still small after %v", smallPathTTL)
	}
	// Bounded: a flood of timed-out handshakes from spoofed sources fills
	// it to maxSmallPaths and no further; expired entries make room.
	for i := range maxSmallPaths + 100 {
		m.remember(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
	if n := len(m.small); n != maxSmallPaths {
		t.Errorf("%d peers remembered, want the cap %d", n, maxSmallPaths)
	}
	now = now.Add(smallPathTTL + time.Second)
	m.remember(a)
	if n := len(m.small); n != 1 || !m.isSmall(a) {
		t.Errorf("after expiry: %d peers remembered, want 1 (the new one)", n)
	}
}

// TestRouteMTU: the loopback route carries what lo's MTU allows.
func TestRouteMTU(t *testing.T) {
	b, err := os.ReadFile("/sys/class/net/lo/mtu")
	if err != nil {
		t.Fatal(err)
	}
	mtu, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr string
		hdr  int
	}{{"127.0.0.1", 28}, {"::1", 48}, {"::ffff:127.0.0.1", 28}} {
		want := mtu - tc.hdr
		if tc.hdr == 28 {
			want = min(mtu, 65535) - tc.hdr // IPv4 caps it at IP_MAX_MTU
		}
		if got := routeMTU(netip.MustParseAddr(tc.addr), 0); got != want {
			t.Errorf("routeMTU(%s) = %d, want %d (lo's MTU %d minus %d)", tc.addr, got, want, mtu, tc.hdr)
		}
	}
	if got := routeMTU(netip.Addr{}, 0); got != 0 {
		t.Errorf("routeMTU(invalid) = %d, want 0", got)
	}
}

// TestPathShrinkBlackhole: the path starts dropping every packet over 1250
// bytes without a word (no ICMP, the kernel's route still says 64 KiB).
// The client notices from the losses while the server still answers,
// closes the connection with CodePathMTU, and both ends remember the
// peer: the next connection starts at 1200 bytes and path MTU discovery
// finds the new limit.
func TestPathShrinkBlackhole(t *testing.T) {
	clientPaths.forget()
	t.Cleanup(clientPaths.forget)

	app := newFakeApp(true)
	ts := startServer(t, Config{}, app)
	relay := newSizeRelay(t, ts.Addr())
	c := mustDial(t, relay.pc.LocalAddr())
	recvConn(t, app.served)
	if got := packetSize(c.Conn); got < DefaultInitialPacketSize {
		t.Fatalf("packet size %d at the start, want ≥ %d", got, DefaultInitialPacketSize)
	}

	const limit = 1250
	relay.dropAbove(limit)
	start := time.Now()
	// Traffic as a tunnel makes it: full-size datagrams (lost now) and
	// small ones (still delivered, and acknowledged).
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-c.Context().Done():
				return
			case <-t.C:
			}
			if n := packetSize(c.Conn) - DatagramOverhead; n > 0 {
				_ = c.SendDatagram(make([]byte, n))
			}
			_ = c.SendDatagram(make([]byte, 100))
		}
	}()
	err := closedBy(t, c.Conn, 15*time.Second)
	took := time.Since(start)
	ae, ok := errors.AsType[*quic.ApplicationError](err)
	if !ok || ae.Remote || ae.ErrorCode != CodePathMTU {
		t.Fatalf("client connection closed by %v, want our own close with CodePathMTU", err)
	}
	t.Logf("black hole noticed after %v: %s", took.Round(time.Millisecond), ae.ErrorMessage)
	peer := netip.MustParseAddr("127.0.0.1")
	if !clientPaths.isSmall(peer) {
		t.Error("the client does not remember the server's path as small")
	}
	eventually(t, "server remembers the client's path", func() bool { return ts.paths.isSmall(peer) })

	// The next connection starts at 1200 and grows to just under the limit.
	c2 := mustDial(t, relay.pc.LocalAddr())
	sc2 := recvConn(t, app.served)
	var last int
	eventually(t, fmt.Sprintf("path MTU discovery up to %d", limit-21), func() bool {
		_ = c2.SendDatagram(make([]byte, 10)) // probes go out with other packets
		last = packetSize(c2.Conn)
		return last >= limit-21
	})
	if last > limit {
		t.Errorf("packet size %d after rediscovery, above the path's %d", last, limit)
	}
	if got := packetSize(sc2); got > limit {
		t.Errorf("server packet size %d, above the path's %d", got, limit)
	}
	t.Logf("new connection: client packets %d, server packets %d bytes", last, packetSize(sc2))
	if c2.Context().Err() != nil {
		t.Errorf("the new connection died: %v", context.Cause(c2.Context()))
	}
}

// TestHandshakeTimeoutRemembered: a handshake that gets no answer may have
// sent packets too large for the path; the next attempt starts small.
func TestHandshakeTimeoutRemembered(t *testing.T) {
	clientPaths.forget()
	t.Cleanup(clientPaths.forget)

	app := newFakeApp(true)
	ts := startServer(t, Config{}, app)
	relay := newSizeRelay(t, ts.Addr())
	relay.dropAbove(1) // a dead path
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	_, err := Dial(ctx, DialConfig{Addr: relay.pc.LocalAddr().String(), TLSConfig: clientTLS(t)})
	if err == nil {
		t.Fatal("Dial through a dead path succeeded")
	}
	if !clientPaths.isSmall(netip.MustParseAddr("127.0.0.1")) {
		t.Errorf("after %v the server's path is not remembered as small", err)
	}
}

// TestLossVerdict: which per-second histories (sent, lost, received) read
// as a path that shrank.
func TestLossVerdict(t *testing.T) {
	type sec = [3]uint64
	for _, tc := range []struct {
		name string
		hist []sec // oldest first
		want bool
	}{
		{"large packets start vanishing mid-transfer", []sec{{1800, 0, 1800}, {1850, 0, 1795}, {368, 180, 185}}, true},
		{"steady black hole, peer answering", []sec{{100, 50, 50}, {104, 50, 54}}, true},
		{"first second of the watch", []sec{{368, 180, 185}}, false},
		{"5% random loss", []sec{{1800, 90, 1700}, {1800, 95, 1700}, {1800, 85, 1700}}, false},
		{"congestion: 10% loss", []sec{{4000, 400, 3000}, {4000, 410, 3000}}, false},
		{"a few losses", []sec{{20, 0, 20}, {10, 7, 3}}, false},
		{"idle", []sec{{0, 0, 0}, {0, 0, 0}, {4, 0, 3}}, false},
		{"burst but the peer is silent", []sec{{1800, 0, 1800}, {368, 180, 0}}, false},
		// A dead path that comes back: seconds in which we sent and heard
		// nothing, then every loss declared at once.
		{"dead path back", []sec{{1800, 0, 1800}, {300, 0, 0}, {5, 0, 0}, {0, 0, 0}, {3, 200, 2}}, false},
		{"dead path back after 5 silent seconds (taken for a shrink: one needless reconnect)", []sec{{300, 0, 0}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, {3, 200, 2}}, true},
		{"idle, then a transfer into a narrower path", []sec{{0, 0, 0}, {1, 0, 1}, {0, 0, 0}, {60, 40, 3}}, true},
	} {
		w := &pathWatch{}
		for _, h := range tc.hist {
			w.record(h[0], h[1], h[2])
		}
		if got := w.lossVerdict() != nil; got != tc.want {
			t.Errorf("%s: shrank = %v, want %v (%v)", tc.name, got, tc.want, w.lossVerdict())
		}
	}
}

// FuzzLossVerdict: any history of per-second counts (three uint16 per
// second) gives a verdict without panicking, and never one without at
// least lossMinPackets lost and packets received in the latest second.
func FuzzLossVerdict(f *testing.F) {
	f.Add([]byte{0x07, 0x08, 0, 0, 0x07, 0x03, 0x01, 0x70, 0, 0xb4, 0, 0xb9})
	f.Fuzz(func(t *testing.T, b []byte) {
		w := &pathWatch{}
		var last [3]uint64
		for ; len(b) >= 6; b = b[6:] {
			for i := range last {
				last[i] = uint64(b[2*i])<<8 | uint64(b[2*i+1])
			}
			w.record(last[0], last[1], last[2])
		}
		if w.n == 0 {
			return
		}
		if err := w.lossVerdict(); err != nil && (last[1] < lossMinPackets || last[2] == 0) {
			t.Errorf("verdict %v with %d lost and %d received in the latest second", err, last[1], last[2])
		}
	})
}
