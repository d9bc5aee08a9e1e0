package tunnel

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Test addresses: the benchmarking range and the documentation prefix
// (DESIGN.md "Addresses in tests and defaults").
var (
	testSrc4 = netip.MustParseAddr("198.18.0.2")
	testDst4 = netip.MustParseAddr("198.18.1.1")
	testSrc6 = netip.MustParseAddr("2001:db8::2")
	testDst6 = netip.MustParseAddr("2001:db8:1::1")
)

// ipv4Packet builds an IPv4 packet with a 20-byte header, a valid header
// checksum and payload after it.
func ipv4Packet(src, dst netip.Addr, proto uint8, payload []byte) []byte {
	b := make([]byte, ipv4HeaderLen+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	b[8] = 64
	b[9] = proto
	s, d := src.As4(), dst.As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	binary.BigEndian.PutUint16(b[10:], ^onesSum(b[:ipv4HeaderLen]))
	copy(b[ipv4HeaderLen:], payload)
	return b
}

// ipv6Packet builds an IPv6 packet without extension headers.
func ipv6Packet(src, dst netip.Addr, next uint8, payload []byte) []byte {
	b := make([]byte, ipv6HeaderLen+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(payload)))
	b[6] = next
	b[7] = 64
	s, d := src.As16(), dst.As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	copy(b[ipv6HeaderLen:], payload)
	return b
}

// onesSum is the one's-complement sum of b (RFC 1071), written
// independently of checksum so that tests do not check the code with
// itself. A region that carries a correct checksum sums to 0xffff.
func onesSum(bs ...[]byte) uint16 {
	var sum uint64
	var odd bool
	var carry byte
	for _, b := range bs {
		for _, c := range b {
			if odd {
				sum += uint64(carry)<<8 | uint64(c)
			} else {
				carry = c
			}
			odd = !odd
		}
	}
	if odd {
		sum += uint64(carry) << 8
	}
	for sum>>16 != 0 {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

func seq(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func TestParseIPHeader(t *testing.T) {
	udp := seq(28)
	v4 := ipv4Packet(testSrc4, testDst4, protoUDP, udp)
	v6 := ipv6Packet(testSrc6, testDst6, protoTCP, udp)
	withOptions := func() []byte { // IHL 6: one 4-byte option word
		b := make([]byte, 24+8)
		copy(b, v4[:20])
		b[0] = 0x46
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		return b
	}()
	set := func(b []byte, f func(b []byte)) []byte {
		b = append([]byte(nil), b...)
		f(b)
		return b
	}
	type result struct {
		Version  uint8
		Proto    uint8
		Src, Dst netip.Addr
		TotalLen int
		HdrLen   int
	}
	tests := []struct {
		name string
		in   []byte
		want result
		ok   bool
	}{
		{"v4", v4, result{4, protoUDP, testSrc4, testDst4, 48, 20}, true},
		{"v4 trailing bytes", append(append([]byte(nil), v4...), 1, 2, 3), result{4, protoUDP, testSrc4, testDst4, 48, 20}, true},
		{"v4 header only", v4[:20:20], result{}, false}, // total 48 > 20
		{"v4 options", withOptions, result{4, protoUDP, testSrc4, testDst4, 32, 24}, true},
		{"v4 total equals header", set(v4[:20], func(b []byte) { binary.BigEndian.PutUint16(b[2:], 20) }), result{4, protoUDP, testSrc4, testDst4, 20, 20}, true},
		{"v6", v6, result{6, protoTCP, testSrc6, testDst6, 68, 40}, true},
		{"v6 empty payload", ipv6Packet(testSrc6, testDst6, 59, nil), result{6, 59, testSrc6, testDst6, 40, 40}, true},
		{"v6 trailing bytes", append(append([]byte(nil), v6...), 9), result{6, protoTCP, testSrc6, testDst6, 68, 40}, true},

		{"nil", nil, result{}, false},
		{"empty", []byte{}, result{}, false},
		{"version 0", set(v4, func(b []byte) { b[0] = 0x05 }), result{}, false},
		{"version 5", set(v4, func(b []byte) { b[0] = 0x55 }), result{}, false},
		{"version 15", set(v6, func(b []byte) { b[0] = 0xf0 }), result{}, false},
		{"v4 truncated header", v4[:19], result{}, false},
		{"v4 one byte", v4[:1], result{}, false},
		{"v4 IHL 4", set(v4, func(b []byte) { b[0] = 0x44 }), result{}, false},
		{"v4 IHL 0", set(v4, func(b []byte) { b[0] = 0x40 }), result{}, false},
		{"v4 IHL 15 beyond total", set(v4, func(b []byte) { b[0] = 0x4f }), result{}, false}, // 60 > 48
		{"v4 total less than IHL", set(v4, func(b []byte) { binary.BigEndian.PutUint16(b[2:], 19) }), result{}, false},
		{"v4 total zero", set(v4, func(b []byte) { binary.BigEndian.PutUint16(b[2:], 0) }), result{}, false},
		{"v4 total beyond buffer", set(v4, func(b []byte) { binary.BigEndian.PutUint16(b[2:], 49) }), result{}, false},
		{"v4 total 65535", set(v4, func(b []byte) { binary.BigEndian.PutUint16(b[2:], 65535) }), result{}, false},
		{"v6 truncated header", v6[:39], result{}, false},
		{"v6 payload beyond buffer", v6[:67], result{}, false},
		{"v6 payload length 65535", set(v6, func(b []byte) { binary.BigEndian.PutUint16(b[4:], 65535) }), result{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, ok := parseIPHeader(tt.in)
			if ok != tt.ok {
				t.Fatalf("parseIPHeader(%x) ok = %v, want %v", tt.in, ok, tt.ok)
			}
			if !ok {
				return
			}
			got := result{h.version, h.proto, h.src, h.dst, h.totalLen, h.hdrLen}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("parseIPHeader(%x) mismatch (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestChecksum(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		initial uint32
		want    uint16
	}{
		// RFC 1071 §3: the sum of 00 01 f2 03 f4 f5 f6 f7 is ddf2.
		{"rfc1071", []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}, 0, ^uint16(0xddf2)},
		{"empty", nil, 0, 0xffff},
		{"odd length pads with zero", []byte{0x12, 0x34, 0x56}, 0, ^uint16(0x1234 + 0x5600)},
		{"carry folds", []byte{0xff, 0xff, 0x00, 0x01}, 0, ^uint16(0x0001)},
		{"initial", []byte{0x00, 0x01}, 0x0001_0002, ^uint16(0x0004)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := checksum(tt.in, tt.initial); got != tt.want {
				t.Errorf("checksum(%x, %#x) = %#04x, want %#04x", tt.in, tt.initial, got, tt.want)
			}
		})
	}
	// A header with its checksum filled in verifies to zero.
	p := ipv4Packet(testSrc4, testDst4, protoUDP, nil)
	if got := checksum(p[:ipv4HeaderLen], 0); got != 0 {
		t.Errorf("checksum(valid IPv4 header) = %#04x, want 0", got)
	}
}

func FuzzParseIPHeader(f *testing.F) {
	f.Add(ipv4Packet(testSrc4, testDst4, protoUDP, seq(8)))
	f.Add(ipv6Packet(testSrc6, testDst6, protoICMPv6, seq(8)))
	f.Add([]byte{0x4f})
	f.Add([]byte{0x60})
	f.Add(make([]byte, 40))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, ok := parseIPHeader(b)
		if !ok {
			return
		}
		if h.totalLen > len(b) {
			t.Errorf("totalLen %d > len %d", h.totalLen, len(b))
		}
		if h.hdrLen > h.totalLen {
			t.Errorf("hdrLen %d > totalLen %d", h.hdrLen, h.totalLen)
		}
		switch h.version {
		case 4:
			if !h.src.Is4() || !h.dst.Is4() || h.hdrLen < ipv4HeaderLen || h.hdrLen%4 != 0 {
				t.Errorf("bad IPv4 header %+v", h)
			}
		case 6:
			if !h.src.Is6() || !h.dst.Is6() || h.hdrLen != ipv6HeaderLen {
				t.Errorf("bad IPv6 header %+v", h)
			}
		default:
			t.Errorf("version %d", h.version)
		}
		if int(b[0]>>4) != int(h.version) {
			t.Errorf("version %d, first nibble %d", h.version, b[0]>>4)
		}
	})
}
