package tunnel

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

var (
	gw4 = netip.MustParseAddr("100.64.0.1")
	gw6 = netip.MustParseAddr("fd00:1::1")
)

// icmpResult is what checkICMPError learned from a generated error.
type icmpResult struct {
	from, to netip.Addr
	typ      int
	code     int
	mtu      int
	quote    []byte
}

// checkICMPError parses b, a generated IP packet carrying an ICMP error, with
// golang.org/x/net and verifies both checksums and the size limit.
func checkICMPError(t *testing.T, b []byte) icmpResult {
	t.Helper()
	var r icmpResult
	if len(b) == 0 {
		t.Fatal("no ICMP error generated")
	}
	switch b[0] >> 4 {
	case 4:
		h, err := ipv4.ParseHeader(b)
		if err != nil {
			t.Fatalf("ipv4.ParseHeader: %v", err)
		}
		if h.TotalLen != len(b) || h.Len != ipv4HeaderLen || h.Protocol != protoICMP || h.TTL == 0 {
			t.Fatalf("bad IPv4 header %+v for %d bytes", h, len(b))
		}
		if s := onesSum(b[:h.Len]); s != 0xffff {
			t.Errorf("IPv4 header checksum does not verify (sum %#04x)", s)
		}
		if len(b) > maxICMPv4Len {
			t.Errorf("ICMPv4 error is %d bytes, more than %d", len(b), maxICMPv4Len)
		}
		m := b[h.Len:]
		if s := onesSum(m); s != 0xffff {
			t.Errorf("ICMPv4 checksum does not verify (sum %#04x)", s)
		}
		msg, err := icmp.ParseMessage(protoICMP, m)
		if err != nil {
			t.Fatalf("icmp.ParseMessage: %v", err)
		}
		r.from, _ = netip.AddrFromSlice(h.Src.To4())
		r.to, _ = netip.AddrFromSlice(h.Dst.To4())
		r.typ, r.code = int(msg.Type.(ipv4.ICMPType)), msg.Code
		switch body := msg.Body.(type) {
		case *icmp.DstUnreach:
			r.quote = body.Data
			r.mtu = int(binary.BigEndian.Uint16(m[6:8])) // RFC 1191 §4
		case *icmp.TimeExceeded:
			r.quote = body.Data
		default:
			t.Fatalf("unexpected ICMPv4 body %T", msg.Body)
		}
	case 6:
		h, err := ipv6.ParseHeader(b)
		if err != nil {
			t.Fatalf("ipv6.ParseHeader: %v", err)
		}
		if h.PayloadLen != len(b)-ipv6HeaderLen || h.NextHeader != protoICMPv6 || h.HopLimit == 0 {
			t.Fatalf("bad IPv6 header %+v for %d bytes", h, len(b))
		}
		if len(b) > maxICMPv6Len {
			t.Errorf("ICMPv6 error is %d bytes, more than %d", len(b), maxICMPv6Len)
		}
		m := b[ipv6HeaderLen:]
		var psh [40]byte // RFC 8200 §8.1
		copy(psh[0:16], h.Src)
		copy(psh[16:32], h.Dst)
		binary.BigEndian.PutUint32(psh[32:], uint32(len(m)))
		psh[39] = protoICMPv6
		if s := onesSum(psh[:], m); s != 0xffff {
			t.Errorf("ICMPv6 checksum does not verify (sum %#04x)", s)
		}
		msg, err := icmp.ParseMessage(protoICMPv6, m)
		if err != nil {
			t.Fatalf("icmp.ParseMessage: %v", err)
		}
		r.from, _ = netip.AddrFromSlice(h.Src)
		r.to, _ = netip.AddrFromSlice(h.Dst)
		r.typ, r.code = int(msg.Type.(ipv6.ICMPType)), msg.Code
		switch body := msg.Body.(type) {
		case *icmp.PacketTooBig:
			r.quote, r.mtu = body.Data, body.MTU
		case *icmp.DstUnreach:
			r.quote = body.Data
		case *icmp.TimeExceeded:
			r.quote = body.Data
		default:
			t.Fatalf("unexpected ICMPv6 body %T", msg.Body)
		}
	default:
		t.Fatalf("generated packet has version %d", b[0]>>4)
	}
	return r
}

func TestAppendICMPError(t *testing.T) {
	small4 := ipv4Packet(testSrc4, testDst4, protoUDP, seq(100))
	big4 := ipv4Packet(testSrc4, testDst4, protoTCP, seq(1400))
	small6 := ipv6Packet(testSrc6, testDst6, protoUDP, seq(100))
	big6 := ipv6Packet(testSrc6, testDst6, protoTCP, seq(1400))
	tests := []struct {
		name      string
		pkt       []byte
		kind      icmpKind
		mtu       int
		from      netip.Addr
		typ, code int
		wantMTU   int
		quoteLen  int
	}{
		{"v4 frag needed", small4, icmpTooBig, 1280, gw4, 3, 4, 1280, len(small4)},
		{"v4 admin prohibited", small4, icmpAdminProhibited, 0, gw4, 3, 13, 0, len(small4)},
		{"v4 time exceeded", small4, icmpTimeExceeded, 0, gw4, 11, 0, 0, len(small4)},
		{"v4 quote capped at 576", big4, icmpTooBig, 1400, gw4, 3, 4, 1400, maxICMPv4Len - 28},
		{"v6 packet too big", small6, icmpTooBig, 1280, gw6, 2, 0, 1280, len(small6)},
		{"v6 admin prohibited", small6, icmpAdminProhibited, 0, gw6, 1, 1, 0, len(small6)},
		{"v6 time exceeded", small6, icmpTimeExceeded, 0, gw6, 3, 0, 0, len(small6)},
		{"v6 quote capped at 1280", big6, icmpTooBig, 1350, gw6, 2, 0, 1350, maxICMPv6Len - 48},
		{"v4 answers an echo request", ipv4Packet(testSrc4, testDst4, protoICMP, []byte{8, 0, 0, 0, 1, 2, 3, 4}), icmpAdminProhibited, 0, gw4, 3, 13, 0, 28},
		{"v6 answers an echo request", ipv6Packet(testSrc6, testDst6, protoICMPv6, []byte{128, 0, 0, 0, 1, 2, 3, 4}), icmpAdminProhibited, 0, gw6, 1, 1, 0, 48},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := append([]byte(nil), tt.pkt...)
			got := appendICMPError(nil, tt.pkt, tt.kind, tt.mtu, tt.from)
			if !bytes.Equal(tt.pkt, orig) {
				t.Error("appendICMPError modified the invoking packet")
			}
			r := checkICMPError(t, got)
			h, _ := parseIPHeader(tt.pkt)
			if r.from != tt.from || r.to != h.src {
				t.Errorf("ICMP error from %v to %v, want from %v to %v", r.from, r.to, tt.from, h.src)
			}
			if r.typ != tt.typ || r.code != tt.code {
				t.Errorf("type/code = %d/%d, want %d/%d", r.typ, r.code, tt.typ, tt.code)
			}
			if r.mtu != tt.wantMTU {
				t.Errorf("MTU = %d, want %d", r.mtu, tt.wantMTU)
			}
			if !bytes.Equal(r.quote, tt.pkt[:tt.quoteLen]) {
				t.Errorf("quote = %d bytes %x..., want the first %d bytes of the packet", len(r.quote), r.quote[:min(len(r.quote), 8)], tt.quoteLen)
			}
		})
	}
}

func TestAppendICMPErrorAppends(t *testing.T) {
	pkt := ipv4Packet(testSrc4, testDst4, protoUDP, seq(10))
	prefix := []byte{0xaa, 0xbb}
	buf := make([]byte, 0, 1024)
	buf = append(buf, prefix...)
	got := appendICMPError(buf, pkt, icmpTimeExceeded, 0, gw4)
	if !bytes.Equal(got[:2], prefix) {
		t.Fatalf("prefix overwritten: %x", got[:2])
	}
	checkICMPError(t, got[2:])
	if &got[0] != &buf[:1][0] {
		t.Error("appendICMPError reallocated although dst had room")
	}
	if raceEnabled {
		t.Skip("the race detector keeps append(dst, make(...)...) from extending in place")
	}
	allocs := testing.AllocsPerRun(100, func() {
		got = appendICMPError(buf[:2], pkt, icmpTooBig, 1280, gw4)
	})
	if allocs != 0 {
		t.Errorf("appendICMPError with room in dst: %v allocs, want 0", allocs)
	}
}

func TestAppendICMPErrorRefuses(t *testing.T) {
	mcast4 := netip.MustParseAddr("224.0.0.1")
	mcast6 := netip.MustParseAddr("ff02::1")
	v4 := func(src, dst netip.Addr, proto uint8, payload []byte) []byte {
		return ipv4Packet(src, dst, proto, payload)
	}
	fragment := func(off uint16) []byte {
		p := v4(testSrc4, testDst4, protoUDP, seq(16))
		binary.BigEndian.PutUint16(p[6:], off)
		return p
	}
	tests := []struct {
		name string
		pkt  []byte
		from netip.Addr
	}{
		{"empty", nil, gw4},
		{"malformed", []byte{0x45, 0, 0}, gw4},
		{"v4 ICMP dest unreachable", v4(testSrc4, testDst4, protoICMP, []byte{3, 1, 0, 0, 0, 0, 0, 0}), gw4},
		{"v4 ICMP source quench", v4(testSrc4, testDst4, protoICMP, []byte{4, 0, 0, 0, 0, 0, 0, 0}), gw4},
		{"v4 ICMP redirect", v4(testSrc4, testDst4, protoICMP, []byte{5, 0, 0, 0, 0, 0, 0, 0}), gw4},
		{"v4 ICMP time exceeded", v4(testSrc4, testDst4, protoICMP, []byte{11, 0, 0, 0, 0, 0, 0, 0}), gw4},
		{"v4 ICMP parameter problem", v4(testSrc4, testDst4, protoICMP, []byte{12, 0, 0, 0, 0, 0, 0, 0}), gw4},
		{"v4 ICMP without a body", v4(testSrc4, testDst4, protoICMP, nil), gw4},
		{"v6 ICMP dest unreachable", ipv6Packet(testSrc6, testDst6, protoICMPv6, []byte{1, 0, 0, 0, 0, 0, 0, 0}), gw6},
		{"v6 ICMP packet too big", ipv6Packet(testSrc6, testDst6, protoICMPv6, []byte{2, 0, 0, 0, 0, 0, 5, 0}), gw6},
		{"v6 ICMP without a body", ipv6Packet(testSrc6, testDst6, protoICMPv6, nil), gw6},
		{"v6 ICMP error behind hop-by-hop", ipv6Packet(testSrc6, testDst6, 0, []byte{protoICMPv6, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0}), gw6},
		{"v6 truncated extension header", ipv6Packet(testSrc6, testDst6, 0, []byte{protoICMPv6}), gw6},
		{"v4 to the limited broadcast", v4(testSrc4, netip.MustParseAddr("255.255.255.255"), protoUDP, seq(8)), gw4},
		{"v4 from the limited broadcast", v4(netip.MustParseAddr("255.255.255.255"), testDst4, protoUDP, seq(8)), gw4},
		{"v4 multicast source", v4(mcast4, testDst4, protoUDP, seq(8)), gw4},
		{"v4 multicast destination", v4(testSrc4, mcast4, protoUDP, seq(8)), gw4},
		{"v4 unspecified source", v4(netip.IPv4Unspecified(), testDst4, protoUDP, seq(8)), gw4},
		{"v6 multicast source", ipv6Packet(mcast6, testDst6, protoUDP, seq(8)), gw6},
		{"v6 multicast destination", ipv6Packet(testSrc6, mcast6, protoUDP, seq(8)), gw6},
		{"v6 unspecified source", ipv6Packet(netip.IPv6Unspecified(), testDst6, protoUDP, seq(8)), gw6},
		{"v4 non-first fragment", fragment(1), gw4},
		{"v4 non-first fragment with MF", fragment(0x2000 | 185), gw4},
		{"v4 from an IPv6 address", v4(testSrc4, testDst4, protoUDP, seq(8)), gw6},
		{"v4 from an invalid address", v4(testSrc4, testDst4, protoUDP, seq(8)), netip.Addr{}},
		{"v6 from an IPv4 address", ipv6Packet(testSrc6, testDst6, protoUDP, seq(8)), gw4},
		{"v6 from a mapped address", ipv6Packet(testSrc6, testDst6, protoUDP, seq(8)), netip.AddrFrom16(gw4.As16())},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, kind := range []icmpKind{icmpTooBig, icmpAdminProhibited, icmpTimeExceeded} {
				dst := []byte{0xee}
				if got := appendICMPError(dst, tt.pkt, kind, 1280, tt.from); !bytes.Equal(got, dst) {
					t.Errorf("appendICMPError(%x, kind %d) = %x, want dst unchanged", tt.pkt, kind, got)
				}
			}
		})
	}
	// The first fragment (offset 0, MF set) is answered.
	if got := appendICMPError(nil, fragment(0x2000), icmpTooBig, 1280, gw4); len(got) == 0 {
		t.Error("first fragment not answered")
	}
}

func FuzzAppendICMPError(f *testing.F) {
	f.Add(ipv4Packet(testSrc4, testDst4, protoUDP, seq(100)), uint8(icmpTooBig), 1280, gw4.AsSlice())
	f.Add(ipv4Packet(testSrc4, testDst4, protoTCP, seq(1000)), uint8(icmpAdminProhibited), 0, gw4.AsSlice())
	f.Add(ipv4Packet(testSrc4, testDst4, protoICMP, []byte{8, 0, 0, 0}), uint8(icmpTimeExceeded), 0, gw4.AsSlice())
	f.Add(ipv6Packet(testSrc6, testDst6, protoUDP, seq(100)), uint8(icmpTooBig), 1280, gw6.AsSlice())
	f.Add(ipv6Packet(testSrc6, testDst6, protoTCP, seq(1500)), uint8(icmpAdminProhibited), 0, gw6.AsSlice())
	f.Add(ipv6Packet(testSrc6, testDst6, protoICMPv6, []byte{128, 0, 0, 0}), uint8(icmpTimeExceeded), 0, gw6.AsSlice())
	f.Fuzz(func(t *testing.T, pkt []byte, kind uint8, mtu int, fromBytes []byte) {
		from, _ := netip.AddrFromSlice(fromBytes)
		k := icmpKind(kind % 3)
		got := appendICMPError(nil, pkt, k, mtu, from)
		if len(got) == 0 {
			return
		}
		h, ok := parseIPHeader(pkt)
		if !ok {
			t.Fatalf("answered a packet parseIPHeader rejects")
		}
		r := checkICMPError(t, got)
		if r.from != from || r.to != h.src {
			t.Errorf("ICMP error from %v to %v, want from %v to %v", r.from, r.to, from, h.src)
		}
		if !bytes.HasPrefix(pkt[:h.totalLen], r.quote) || len(r.quote) == 0 {
			t.Errorf("quote is not a non-empty prefix of the packet")
		}
		if h.src.IsMulticast() || h.dst.IsMulticast() || h.src.IsUnspecified() {
			t.Errorf("answered a packet from %v to %v", h.src, h.dst)
		}
	})
}
