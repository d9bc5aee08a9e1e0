package tunnel

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"
)

// The client's LAN in these tests: its host's connected networks.
var (
	lanNet4 = netip.MustParsePrefix("198.18.77.0/24")
	lanNet6 = netip.MustParsePrefix("2001:db8:77::/64")
)

func newCheckClient() *Client {
	return &Client{
		dgramPrefix: []byte{0x00, 0x00},
		addresses:   []netip.Prefix{netip.PrefixFrom(sessAddr4, 32), netip.PrefixFrom(sessAddr6, 128)},
		localNets:   []netip.Prefix{lanNet4, lanNet6},
	}
}

// icmpOf returns an ICMP message of type typ with code 0, an unverified
// checksum and 4 bytes of body.
func icmpOf(typ byte) []byte { return []byte{typ, 0, 0, 0, 0, 0, 0, 0} }

// extHeader returns an 8-byte IPv6 hop-by-hop, routing or destination
// options header (PadN) followed by next.
func extHeader(next byte) []byte { return []byte{next, 0, 1, 4, 0, 0, 0, 0} }

// fragHeader returns an IPv6 fragment header for offset (in 8-byte units)
// followed by next.
func fragHeader(next byte, offset uint16) []byte {
	return []byte{next, 0, byte(offset >> 5), byte(offset << 3), 0, 0, 0, 1}
}

// ipv4Fragment sets the fragment offset (in 8-byte units) of the IPv4
// packet b and its header checksum.
func ipv4Fragment(b []byte, offset uint16) []byte {
	b[6], b[7] = byte(offset>>8)&0x1f, byte(offset)
	b[10], b[11] = 0, 0
	binary.BigEndian.PutUint16(b[10:], ^onesSum(b[:ipv4HeaderLen]))
	return b
}

// tunnelMartians are sources no packet from the server may have, each
// with the drop reason.
var tunnelMartians = []struct {
	src  string
	drop dropReason
}{
	{"127.0.0.1", dropSourceBogus},
	{"127.1.2.3", dropSourceBogus},
	{"::1", dropSourceBogus},
	{"169.254.1.1", dropSourceBogus},
	{"fe80::77", dropSourceBogus},
	{"224.0.0.1", dropSourceBogus},
	{"239.1.2.3", dropSourceBogus},
	{"ff02::1", dropSourceBogus},
	{"ff0e::1", dropSourceBogus},
	{"0.0.0.0", dropSourceBogus},
	{"0.1.2.3", dropSourceBogus},
	{"::", dropSourceBogus},
	{"255.255.255.255", dropSourceBogus},
	{"::ffff:198.18.1.1", dropSourceBogus},
	{"100.64.0.2", dropSourceLocal},      // our own address
	{"fd00:1::2", dropSourceLocal},       // our own address
	{"198.18.77.10", dropSourceLocal},    // the LAN
	{"2001:db8:77::10", dropSourceLocal}, // the LAN
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
		// ICMP that does not configure the link passes.
		{"icmpv4 echo reply", cat([]byte{0, 0}, ipv4Packet(testDst4, sessAddr4, protoICMP, icmpOf(0))), numDropReasons},
		{"icmpv4 unreachable", cat([]byte{0, 0}, ipv4Packet(testDst4, sessAddr4, protoICMP, icmpOf(3))), numDropReasons},
		{"icmpv6 echo reply", cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, protoICMPv6, icmpOf(129))), numDropReasons},
		{"icmpv6 packet too big", cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, protoICMPv6, icmpOf(2))), numDropReasons},
		{"icmpv6 echo reply behind headers", cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, ipv6HopByHop, cat(extHeader(protoICMPv6), icmpOf(129)))), numDropReasons},
		{"icmpv6 empty", cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, protoICMPv6, nil)), numDropReasons},
		// A later fragment's first byte is no ICMP type.
		{"icmpv4 later fragment", cat([]byte{0, 0}, ipv4Fragment(ipv4Packet(testDst4, sessAddr4, protoICMP, icmpOf(5)), 1)), numDropReasons},
		{"icmpv6 later fragment", cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, ipv6Fragment, cat(fragHeader(protoICMPv6, 1), icmpOf(134)))), numDropReasons},
		// ICMP that configures a link is dropped, from any source.
		{"icmpv4 redirect", cat([]byte{0, 0}, ipv4Packet(testDst4, sessAddr4, protoICMP, icmpOf(5))), dropLinkControl},
		{"icmpv4 router advertisement", cat([]byte{0, 0}, ipv4Packet(testDst4, sessAddr4, protoICMP, icmpOf(9))), dropLinkControl},
		{"icmpv4 router solicitation", cat([]byte{0, 0}, ipv4Packet(testDst4, sessAddr4, protoICMP, icmpOf(10))), dropLinkControl},
		{"router solicitation", cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, protoICMPv6, icmpOf(133))), dropLinkControl},
		{"router advertisement", cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, protoICMPv6, icmpOf(134))), dropLinkControl},
		{"neighbour solicitation", cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, protoICMPv6, icmpOf(135))), dropLinkControl},
		{"neighbour advertisement", cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, protoICMPv6, icmpOf(136))), dropLinkControl},
		{"redirect", cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, protoICMPv6, icmpOf(137))), dropLinkControl},
		{"router advertisement behind hop-by-hop", cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, ipv6HopByHop, cat(extHeader(protoICMPv6), icmpOf(134)))), dropLinkControl},
		{"neighbour advertisement behind headers", cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, ipv6DestOpts,
			cat(extHeader(ipv6Routing), extHeader(ipv6Fragment), fragHeader(ipv6AH, 0), []byte{protoICMPv6, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, icmpOf(136)))), dropLinkControl},
		{"too many extension headers", cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, ipv6DestOpts, cat(
			extHeader(ipv6DestOpts), extHeader(ipv6DestOpts), extHeader(ipv6DestOpts), extHeader(ipv6DestOpts),
			extHeader(ipv6DestOpts), extHeader(ipv6DestOpts), extHeader(ipv6DestOpts), extHeader(protoICMPv6), icmpOf(129)))), dropLinkControl},
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

// TestClientDropsMartianSources: the server cannot deliver packets that
// pose as loopback, link-local, multicast or unspecified sources, as the
// client itself or as the client's LAN.
func TestClientDropsMartianSources(t *testing.T) {
	for _, tt := range tunnelMartians {
		t.Run(tt.src, func(t *testing.T) {
			c := newCheckClient()
			src := netip.MustParseAddr(tt.src)
			var pkt []byte
			if src.Is4() {
				pkt = ipv4Packet(src, sessAddr4, protoUDP, seq(10))
			} else {
				pkt = ipv6Packet(src, sessAddr6, protoUDP, seq(10))
			}
			if _, ok := c.checkDatagram(cat([]byte{0, 0}, pkt)); ok {
				t.Fatalf("checkDatagram(from %s) accepted, want dropped as %s", src, tt.drop)
			}
			if n := c.stats.drops[tt.drop].Load(); n != 1 {
				t.Errorf("checkDatagram(from %s): drops[%s] = %d, want 1", src, tt.drop, n)
			}
		})
	}
}

func TestLocalNetworks(t *testing.T) {
	nets := []netip.Prefix{
		netip.MustParsePrefix("198.18.77.9/24"), {}, netip.MustParsePrefix("0.0.0.0/0"),
		netip.MustParsePrefix("2001:db8:77::1/64"),
	}
	want := []netip.Prefix{lanNet4, lanNet6}
	if got := localNetworks(nets); !slices.Equal(got, want) {
		t.Errorf("localNetworks(%v) = %v, want %v", nets, got, want)
	}
	many := make([]netip.Prefix, 2*maxLocalNetworks)
	for i := range many {
		many[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16)
	}
	if got := localNetworks(many); len(got) != maxLocalNetworks || got[0] != many[0] {
		t.Errorf("localNetworks(%d networks) = %d, want the first %d", len(many), len(got), maxLocalNetworks)
	}
}

func TestClientDataPathAllocs(t *testing.T) {
	c := newCheckClient()
	d := cat([]byte{0, 0}, ipv4Packet(testDst4, sessAddr4, protoUDP, seq(1200)))
	bad := cat([]byte{0, 0}, ipv4Packet(testDst4, testSrc4, protoUDP, seq(64)))
	lan := cat([]byte{0, 0}, ipv6Packet(netip.MustParseAddr("2001:db8:77::10"), sessAddr6, protoUDP, seq(64)))
	ll := cat([]byte{0, 0}, ipv6Packet(netip.MustParseAddr("fe80::77"), sessAddr6, protoUDP, seq(64)))
	ra := cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, ipv6HopByHop, cat(extHeader(protoICMPv6), icmpOf(134))))
	echo := cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, ipv6HopByHop, cat(extHeader(protoICMPv6), icmpOf(129))))
	for name, f := range map[string]func(){
		"checkDatagram accepted": func() {
			if _, ok := c.checkDatagram(d); !ok {
				t.Fatal("rejected")
			}
		},
		"checkDatagram accepted ICMPv6 behind a header": func() {
			if _, ok := c.checkDatagram(echo); !ok {
				t.Fatal("rejected")
			}
		},
		"checkDatagram refused":            func() { c.checkDatagram(bad) },
		"checkDatagram refused LAN source": func() { c.checkDatagram(lan) },
		"checkDatagram refused link-local": func() { c.checkDatagram(ll) },
		"checkDatagram refused RA":         func() { c.checkDatagram(ra) },
		"ownAddr":                          func() { c.ownAddr(sessAddr6) },
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
	f.Add(cat([]byte{0, 0}, ipv6Packet(netip.MustParseAddr("fe80::77"), sessAddr6, protoUDP, seq(10))))
	f.Add(cat([]byte{0, 0}, ipv4Packet(netip.MustParseAddr("198.18.77.10"), sessAddr4, protoUDP, seq(10))))
	f.Add(cat([]byte{0, 0}, ipv4Packet(testDst4, sessAddr4, protoICMP, icmpOf(5))))
	f.Add(cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, protoICMPv6, icmpOf(134))))
	f.Add(cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, ipv6HopByHop, cat(extHeader(ipv6Fragment), fragHeader(protoICMPv6, 0), icmpOf(136)))))
	f.Add(cat([]byte{0, 0}, ipv6Packet(testDst6, sessAddr6, ipv6Fragment, cat(fragHeader(protoICMPv6, 1), icmpOf(134)))))
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
		// The source is no martian, no address of ours and not the LAN.
		for _, m := range tunnelMartians {
			if a := netip.MustParseAddr(m.src); a.BitLen() == h.src.BitLen() && netip.PrefixFrom(a, martianBits(a)).Contains(h.src) {
				t.Fatalf("checkDatagram accepted %x from %s (%s)", pkt, h.src, m.drop)
			}
		}
		// No neighbour discovery or ICMPv4 redirect right after the IP
		// header (extension headers are the table test's).
		if len(pkt) > h.hdrLen {
			typ := pkt[h.hdrLen]
			if h.proto == protoICMPv6 && typ >= 133 && typ <= 137 {
				t.Fatalf("checkDatagram accepted ICMPv6 type %d: %x", typ, pkt)
			}
			if h.version == 4 && h.proto == protoICMP && pkt[6]&0x1f == 0 && pkt[7] == 0 && typ == 5 {
				t.Fatalf("checkDatagram accepted an ICMPv4 redirect: %x", pkt)
			}
		}
	})
}

// martianBits returns the length of the prefix around a, one of
// tunnelMartians, that no source may be in.
func martianBits(a netip.Addr) int {
	switch {
	case a.Is4() && a.As4()[0] == 127, a.Is4() && a.As4()[0] == 0:
		return 8
	case a.Is4() && a.IsLinkLocalUnicast():
		return 16
	case a.Is4() && a.IsMulticast():
		return 4
	case a.Is6() && a.IsLinkLocalUnicast():
		return 10
	case a.Is6() && a.IsMulticast():
		return 8
	case a.Is4In6():
		return 96
	case lanNet4.Contains(a):
		return lanNet4.Bits()
	case lanNet6.Contains(a):
		return lanNet6.Bits()
	}
	return a.BitLen()
}
