package main

import (
	"encoding/binary"
	"net/netip"
)

// IP protocol numbers of the packets spoofclient builds and reads.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

// TCP flags.
const (
	tcpSYN = 0x02
	tcpACK = 0x10
)

// buildUDP appends an IPv4 or IPv6 packet carrying one UDP datagram with
// correct header and UDP checksums.
func buildUDP(b []byte, src, dst netip.AddrPort, data []byte) []byte {
	udp := make([]byte, 8, 8+len(data))
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(data)))
	udp = append(udp, data...)
	return buildIP(b, src.Addr(), dst.Addr(), protoUDP, udp)
}

// buildTCP appends a packet carrying a TCP segment without options or data.
func buildTCP(b []byte, src, dst netip.AddrPort, seq, ack uint32, flags uint8) []byte {
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12] = 5 << 4 // data offset: 5 words
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 65535) // window
	return buildIP(b, src.Addr(), dst.Addr(), protoTCP, tcp)
}

// buildEcho appends an ICMP (IPv4) or ICMPv6 echo request.
func buildEcho(b []byte, src, dst netip.Addr, id, seq uint16) []byte {
	m := make([]byte, 8, 24)
	if src.Is4() {
		m[0] = 8
	} else {
		m[0] = 128
	}
	binary.BigEndian.PutUint16(m[4:], id)
	binary.BigEndian.PutUint16(m[6:], seq)
	m = append(m, "masque-e2e-probe"...)
	proto := uint8(protoICMP)
	if src.Is6() {
		proto = protoICMPv6
	}
	return buildIP(b, src, dst, proto, m)
}

// buildIP appends an IPv4 (DF, TTL 64) or IPv6 (hop limit 64) header from
// src to dst followed by the upper-layer message l4, whose checksum it
// fills in: over the pseudo-header for UDP, TCP and ICMPv6, over the
// message alone for ICMP.
func buildIP(b []byte, src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	var off int // of the checksum in l4
	switch proto {
	case protoUDP:
		off = 6
	case protoTCP:
		off = 16
	default: // ICMP, ICMPv6
		off = 2
	}
	binary.BigEndian.PutUint16(l4[off:], 0)
	var pseudo []byte
	if proto != protoICMP {
		if src.Is4() {
			s, d := src.As4(), dst.As4()
			pseudo = append(append(pseudo, s[:]...), d[:]...)
			pseudo = append(pseudo, 0, proto)
			pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(l4)))
		} else {
			s, d := src.As16(), dst.As16()
			pseudo = append(append(pseudo, s[:]...), d[:]...)
			pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(l4)))
			pseudo = append(pseudo, 0, 0, 0, proto)
		}
	}
	sum := checksum(append(pseudo, l4...))
	if sum == 0 && proto == protoUDP {
		sum = 0xffff // RFC 768: 0 means no checksum
	}
	binary.BigEndian.PutUint16(l4[off:], sum)

	if src.Is4() {
		h := make([]byte, 20)
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
		binary.BigEndian.PutUint16(h[4:], 0x1234)
		h[6] = 0x40 // DF
		h[8] = 64
		h[9] = proto
		s, d := src.As4(), dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		binary.BigEndian.PutUint16(h[10:], checksum(h))
		return append(append(b, h...), l4...)
	}
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(l4)))
	h[6] = proto
	h[7] = 64
	s, d := src.As16(), dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(append(b, h...), l4...)
}

// packetInfo is what spoofclient needs to know about a received packet.
type packetInfo struct {
	src, dst netip.Addr
	proto    uint8
	l4       []byte // the upper-layer message (no IPv6 extension headers are walked)

	// ICMP errors: type, code, and the destination of the packet they quote.
	icmpErr            bool
	icmpType, icmpCode uint8
	quotedDst          netip.Addr
}

// parsePacket parses an IPv4 or IPv6 packet; ok is false if it is
// truncated or of another version.
func parsePacket(p []byte) (pi packetInfo, ok bool) {
	if len(p) < 1 {
		return pi, false
	}
	switch p[0] >> 4 {
	case 4:
		ihl := int(p[0]&0x0f) * 4
		if len(p) < 20 || ihl < 20 || len(p) < ihl {
			return pi, false
		}
		pi.src = netip.AddrFrom4([4]byte(p[12:16]))
		pi.dst = netip.AddrFrom4([4]byte(p[16:20]))
		pi.proto = p[9]
		pi.l4 = p[ihl:]
	case 6:
		if len(p) < 40 {
			return pi, false
		}
		pi.src = netip.AddrFrom16([16]byte(p[8:24]))
		pi.dst = netip.AddrFrom16([16]byte(p[24:40]))
		pi.proto = p[6]
		pi.l4 = p[40:]
	default:
		return pi, false
	}
	if len(pi.l4) < 8 {
		return pi, true
	}
	t := pi.l4[0]
	switch {
	case pi.proto == protoICMP && (t == 3 || t == 4 || t == 5 || t == 11 || t == 12),
		pi.proto == protoICMPv6 && t >= 1 && t <= 4:
		pi.icmpErr, pi.icmpType, pi.icmpCode = true, t, pi.l4[1]
		q := pi.l4[8:]
		switch {
		case len(q) >= 20 && q[0]>>4 == 4:
			pi.quotedDst = netip.AddrFrom4([4]byte(q[16:20]))
		case len(q) >= 40 && q[0]>>4 == 6:
			pi.quotedDst = netip.AddrFrom16([16]byte(q[24:40]))
		}
	}
	return pi, true
}
