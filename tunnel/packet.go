package tunnel

import (
	"encoding/binary"
	"net/netip"
)

// IP protocol numbers used here.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

const (
	ipv4HeaderLen = 20
	ipv6HeaderLen = 40
)

// ipHeader is the part of an IP header the data path decides on.
type ipHeader struct {
	version  uint8
	proto    uint8 // IPv4 protocol or IPv6 next header (extension headers are not walked)
	src, dst netip.Addr
	totalLen int // from the header; <= len(packet) when valid
	hdrLen   int
}

// parseIPHeader reads the header of the IP packet b. It does not allocate.
// It reports false for anything that is not a well-formed IPv4 or IPv6
// header whose stated length fits in b.
func parseIPHeader(b []byte) (h ipHeader, ok bool) {
	if len(b) < 1 {
		return h, false
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < ipv4HeaderLen {
			return h, false
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:4]))
		if ihl < ipv4HeaderLen || total < ihl || total > len(b) {
			return h, false
		}
		h.version = 4
		h.hdrLen = ihl
		h.totalLen = total
		h.proto = b[9]
		h.src = netip.AddrFrom4([4]byte(b[12:16]))
		h.dst = netip.AddrFrom4([4]byte(b[16:20]))
		return h, true
	case 6:
		if len(b) < ipv6HeaderLen {
			return h, false
		}
		total := ipv6HeaderLen + int(binary.BigEndian.Uint16(b[4:6]))
		if total > len(b) {
			return h, false
		}
		h.version = 6
		h.hdrLen = ipv6HeaderLen
		h.totalLen = total
		h.proto = b[6]
		h.src = netip.AddrFrom16([16]byte(b[8:24]))
		h.dst = netip.AddrFrom16([16]byte(b[24:40]))
		return h, true
	}
	return h, false
}

// checksum returns the Internet checksum (RFC 1071) of b folded with the
// partial sum initial.
func checksum(b []byte, initial uint32) uint16 {
	sum := initial
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = (sum >> 16) + (sum & 0xffff)
	}
	return ^uint16(sum)
}

// pseudoHeaderSum is the partial checksum of an IPv6 pseudo-header.
func pseudoHeaderSum6(src, dst netip.Addr, proto uint8, length int) uint32 {
	var sum uint32
	s, d := src.As16(), dst.As16()
	for i := 0; i < 16; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(s[i:]))
		sum += uint32(binary.BigEndian.Uint16(d[i:]))
	}
	sum += uint32(length)
	sum += uint32(proto)
	return sum
}
