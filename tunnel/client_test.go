package tunnel

import (
	"bytes"
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

// FuzzClientCheckDatagram: any datagram from the server is either one
// whole IP packet of the session, for one of the client's addresses, or
// dropped under exactly one reason.
func FuzzClientCheckDatagram(f *testing.F) {
	f.Add(cat([]byte{0, 0}, ipv4Packet(testDst4, sessAddr4, protoUDP, seq(10))))
	f.Add(cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, protoTCP, seq(10)), []byte{0xff}))
	f.Add(cat([]byte{0, 1}, ipv4Packet(testDst4, sessAddr4, protoUDP, nil)))
	f.Add(cat([]byte{4, 0}, ipv4Packet(testDst4, sessAddr4, protoUDP, nil)))
	f.Add([]byte{0, 0, 0x45, 0, 0, 200})
	f.Fuzz(func(t *testing.T, d []byte) {
		c := newCheckClient()
		pkt, ok := c.checkDatagram(d)
		var drops uint64
		for r := range numDropReasons {
			drops += c.stats.drops[r].Load()
		}
		if ok == (drops != 0) || drops > 1 {
			t.Fatalf("checkDatagram(%x) = %v with %d drops; want exactly one of the two", d, ok, drops)
		}
		if !ok {
			return
		}
		if !bytes.HasPrefix(d, c.dgramPrefix) || !bytes.HasSuffix(d[:len(c.dgramPrefix)+len(pkt)], pkt) {
			t.Fatalf("packet %x is not the datagram's after its prefix", pkt)
		}
		h, hok := parseIPHeader(pkt)
		if !hok || h.totalLen != len(pkt) || len(pkt) > maxMTU || !c.ownAddr(h.dst) {
			t.Fatalf("checkDatagram accepted %x: not one whole packet for the client", pkt)
		}
	})
}
