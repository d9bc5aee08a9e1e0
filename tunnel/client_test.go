package tunnel

import (
	"net/netip"
	"testing"
)

func newCheckClient() *Client {
	return &Client{
		dgramPrefix: []byte{0x00, 0x00},
		addresses:   []netip.Prefix{netip.PrefixFrom(sessAddr4, 32), netip.PrefixFrom(sessAddr6, 128)},
	}
}

// TestClientCheckDatagram: the client takes only its own session's
// packets, addressed to it, with context ID 0.
func TestClientCheckDatagram(t *testing.T) {
	c := newCheckClient()
	pkt := ipv4Packet(testDst4, sessAddr4, protoUDP, seq(100))
	for _, tt := range []struct {
		name string
		d    []byte
		drop dropReason // numDropReasons: accepted
	}{
		{"accepted", cat([]byte{0, 0}, pkt), numDropReasons},
		{"accepted IPv6", cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, protoUDP, seq(10))), numDropReasons},
		{"other stream", cat([]byte{1, 0}, pkt), dropUnknownStream},
		{"context ID 2", cat([]byte{0, 2}, pkt), dropContextID},
		{"empty", nil, dropUnknownStream},
		{"not IP", []byte{0, 0, 0x10, 1, 2}, dropMalformed},
		{"not for us", cat([]byte{0, 0}, ipv4Packet(testDst4, testSrc4, protoUDP, seq(10))), dropNoSession},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var before [numDropReasons]uint64
			for r := range numDropReasons {
				before[r] = c.stats.drops[r].Load()
			}
			got, ok := c.checkDatagram(tt.d)
			if ok != (tt.drop == numDropReasons) {
				t.Fatalf("checkDatagram accepted = %v, want %v", ok, tt.drop == numDropReasons)
			}
			if ok && string(got) != string(tt.d[2:]) {
				t.Fatalf("checkDatagram returned %x, want the packet %x", got, tt.d[2:])
			}
			for r := range numDropReasons {
				want := before[r]
				if r == tt.drop {
					want++
				}
				if n := c.stats.drops[r].Load(); n != want {
					t.Errorf("drops[%s] = %d, want %d", r, n, want)
				}
			}
		})
	}
}

func TestClientDataPathAllocs(t *testing.T) {
	c := newCheckClient()
	d := cat([]byte{0, 0}, ipv4Packet(testDst4, sessAddr4, protoUDP, seq(1200)))
	bad := cat([]byte{0, 0}, ipv4Packet(testDst4, testSrc4, protoUDP, seq(64)))
	for name, f := range map[string]func(){
		"checkDatagram accepted": func() {
			if _, ok := c.checkDatagram(d); !ok {
				t.Fatal("rejected")
			}
		},
		"checkDatagram refused": func() { c.checkDatagram(bad) },
		"ownAddr":               func() { c.ownAddr(sessAddr6) },
	} {
		if n := testing.AllocsPerRun(1000, f); n != 0 {
			t.Errorf("%s: %v allocs per packet, want 0", name, n)
		}
	}
}

func BenchmarkClientCheckDatagram(b *testing.B) {
	c := newCheckClient()
	d := cat([]byte{0, 0}, ipv4Packet(testDst4, sessAddr4, protoUDP, seq(1400-ipv4HeaderLen)))
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := c.checkDatagram(d); !ok {
			b.Fatal("rejected")
		}
	}
}
