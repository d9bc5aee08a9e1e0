package tunnel

import (
	"encoding/binary"
	"net/netip"
)

// icmpKind is an ICMP error the data path generates.
type icmpKind uint8

const (
	// icmpTooBig is ICMPv4 Fragmentation Needed / ICMPv6 Packet Too Big;
	// its mtu argument is the next-hop MTU.
	icmpTooBig icmpKind = iota
	// icmpAdminProhibited is Destination Unreachable, communication
	// administratively prohibited.
	icmpAdminProhibited
	// icmpTimeExceeded is Time Exceeded in transit.
	icmpTimeExceeded
)

// Limits on the size of generated ICMP errors: RFC 1812 §4.3.2.3 (576 for
// IPv4), RFC 4443 §2.4 (the IPv6 minimum MTU).
const (
	maxICMPv4Len = 576
	maxICMPv6Len = 1280
)

// appendICMPError appends to dst an ICMP error about the invoking packet
// pkt, sent from the address from to pkt's source. It returns dst unchanged
// if pkt must not be answered with an ICMP error (malformed, itself an ICMP
// error, or from an unspecified or multicast source; RFC 1812 §4.3.2.7,
// RFC 4443 §2.4 (e)). It allocates only if dst lacks capacity.
func appendICMPError(dst, pkt []byte, kind icmpKind, mtu int, from netip.Addr) []byte {
	h, ok := parseIPHeader(pkt)
	if !ok || h.src.IsUnspecified() || h.src.IsMulticast() || h.dst.IsMulticast() ||
		h.src == limitedBroadcast || h.dst == limitedBroadcast || isICMPError(pkt, h) {
		return dst
	}
	pkt = pkt[:h.totalLen]
	if h.version == 4 {
		if !from.Is4() {
			return dst
		}
		// Only the first fragment is answered.
		if binary.BigEndian.Uint16(pkt[6:8])&0x1fff != 0 {
			return dst
		}
		quote := min(len(pkt), maxICMPv4Len-ipv4HeaderLen-8)
		total := ipv4HeaderLen + 8 + quote
		start := len(dst)
		dst = append(dst, make([]byte, total)...)[:start+total]
		b := dst[start:]
		b[0] = 0x45
		b[1] = 0
		binary.BigEndian.PutUint16(b[2:], uint16(total))
		binary.BigEndian.PutUint32(b[4:], 0)
		b[8] = 64
		b[9] = protoICMP
		binary.BigEndian.PutUint16(b[10:], 0)
		f4, s4 := from.As4(), h.src.As4()
		copy(b[12:16], f4[:])
		copy(b[16:20], s4[:])
		binary.BigEndian.PutUint16(b[10:], checksum(b[:ipv4HeaderLen], 0))
		m := b[ipv4HeaderLen:]
		switch kind {
		case icmpTooBig:
			m[0], m[1] = 3, 4
			binary.BigEndian.PutUint16(m[4:], 0)
			binary.BigEndian.PutUint16(m[6:], uint16(mtu))
		case icmpAdminProhibited:
			m[0], m[1] = 3, 13
			binary.BigEndian.PutUint32(m[4:], 0)
		case icmpTimeExceeded:
			m[0], m[1] = 11, 0
			binary.BigEndian.PutUint32(m[4:], 0)
		}
		binary.BigEndian.PutUint16(m[2:], 0)
		copy(m[8:], pkt[:quote])
		binary.BigEndian.PutUint16(m[2:], checksum(m, 0))
		return dst
	}
	if !from.Is6() || from.Is4In6() {
		return dst
	}
	quote := min(len(pkt), maxICMPv6Len-ipv6HeaderLen-8)
	plen := 8 + quote
	total := ipv6HeaderLen + plen
	start := len(dst)
	dst = append(dst, make([]byte, total)...)[:start+total]
	b := dst[start:]
	binary.BigEndian.PutUint32(b[0:], 6<<28)
	binary.BigEndian.PutUint16(b[4:], uint16(plen))
	b[6] = protoICMPv6
	b[7] = 64
	f16, s16 := from.As16(), h.src.As16()
	copy(b[8:24], f16[:])
	copy(b[24:40], s16[:])
	m := b[ipv6HeaderLen:]
	switch kind {
	case icmpTooBig:
		m[0], m[1] = 2, 0
		binary.BigEndian.PutUint32(m[4:], uint32(mtu))
	case icmpAdminProhibited:
		m[0], m[1] = 1, 1
		binary.BigEndian.PutUint32(m[4:], 0)
	case icmpTimeExceeded:
		m[0], m[1] = 3, 0
		binary.BigEndian.PutUint32(m[4:], 0)
	}
	binary.BigEndian.PutUint16(m[2:], 0)
	copy(m[8:], pkt[:quote])
	binary.BigEndian.PutUint16(m[2:], checksum(m, pseudoHeaderSum6(from, h.src, protoICMPv6, plen)))
	return dst
}

var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// isICMPError reports whether pkt is an ICMP error message, which must never
// be answered with another one (RFC 1812 §4.3.2.7, RFC 4443 §2.4 (e)). A
// packet whose upper layer cannot be found is treated as one.
func isICMPError(pkt []byte, h ipHeader) bool {
	switch h.version {
	case 4:
		if h.proto != protoICMP {
			return false
		}
		if len(pkt) <= h.hdrLen {
			return true // truncated: do not answer
		}
		switch pkt[h.hdrLen] {
		case 3, 4, 5, 11, 12:
			return true
		}
		return false
	case 6:
		proto, off, ok := ipv6UpperLayer(pkt[:h.totalLen])
		if !ok {
			return true
		}
		if proto != protoICMPv6 {
			return false
		}
		return off >= len(pkt) || pkt[off] < 128
	}
	return true
}

// ipv6UpperLayer walks the IPv6 extension headers of pkt and returns the
// upper-layer protocol and its offset. It reports false if the chain is
// truncated, or ends in a non-first fragment (which has no upper-layer
// header).
func ipv6UpperLayer(pkt []byte) (proto uint8, off int, ok bool) {
	proto, off = pkt[6], ipv6HeaderLen
	for range 8 { // bound the walk; real packets have few headers
		switch proto {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if off+2 > len(pkt) {
				return 0, 0, false
			}
			proto, off = pkt[off], off+8+int(pkt[off+1])*8
		case 44: // fragment
			if off+8 > len(pkt) {
				return 0, 0, false
			}
			if binary.BigEndian.Uint16(pkt[off+2:off+4])&^7 != 0 {
				return 0, 0, false // not the first fragment
			}
			proto, off = pkt[off], off+8
		default:
			return proto, off, off <= len(pkt)
		}
	}
	return 0, 0, false
}
