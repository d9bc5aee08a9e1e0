package tunnel

import (
	"encoding/binary"
	"net/netip"
)

// What the client refuses from the server, besides packets that are not
// for it. The client trusts the server with packets, not with the host:
// the TUN is not a LAN, so nothing from the tunnel may pose as a
// neighbour, as the host itself or as its LAN, or configure the link.
// These checks run per packet and allocate nothing; the kernel's own
// (accept_ra=0, accept_redirects=0, rp_filter=1 on the TUN, tun.Config
// EndHost) are the second line, since the kernel honours ICMPv4
// redirects when any of all's or the link's accept_redirects is on and
// applies the looser of all's and the link's rp_filter.

// maxLocalNetworks caps ClientConfig.LocalNetworks: each costs a
// comparison per received packet. A host with more connected networks
// than that keeps the rest to the TUN's reverse-path filter.
const maxLocalNetworks = 64

// bogusSource reports whether a cannot be the source of a packet from
// beyond the server: unspecified, "this network" (0.0.0.0/8, RFC 791),
// loopback, link-local, multicast, the IPv4 limited broadcast, or an
// IPv4-mapped IPv6 address (RFC 4291 §2.5.5.2).
func bogusSource(a netip.Addr) bool {
	// On the bytes: netip's Is* methods each unpack the address again.
	if a.Is4() {
		b := a.As4()
		return b[0] == 0 || b[0] == 127 || b[0]&0xf0 == 224 || b[0] == 169 && b[1] == 254 || b == [4]byte{255, 255, 255, 255}
	}
	b := a.As16()
	switch {
	case b[0] == 0xff: // multicast
		return true
	case b[0] == 0xfe && b[1]&0xc0 == 0x80: // link-local
		return true
	case b[0] != 0:
		return false
	}
	// ::, ::1 and ::ffff:0:0/96.
	hi := binary.BigEndian.Uint64(b[:8])
	mid := binary.BigEndian.Uint32(b[8:12])
	lo := binary.BigEndian.Uint32(b[12:])
	return hi == 0 && (mid == 0xffff || mid == 0 && lo <= 1)
}

// localSource reports whether a is one of the client's own addresses (a
// packet from the tunnel spoofed as coming from us) or inside one of the
// host's directly connected networks (spoofed as coming from the LAN).
func (c *Client) localSource(a netip.Addr) bool {
	if c.ownAddr(a) {
		return true
	}
	for _, p := range c.localNets {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ICMP types that configure a link.
const (
	icmpRedirect             = 5  // RFC 792
	icmpRouterAdvertisement  = 9  // RFC 1256
	icmpRouterSolicitation   = 10 // RFC 1256
	icmpv6RouterSolicitation = 133
	icmpv6Redirect           = 137 // RFC 4861: 133-137 are neighbour discovery
)

// IPv6 extension headers that linkControlICMP walks past (RFC 8200 §4).
const (
	ipv6HopByHop  = 0
	ipv6Routing   = 43
	ipv6Fragment  = 44
	ipv6AH        = 51
	ipv6DestOpts  = 60
	maxExtHeaders = 8
)

// linkControlICMP reports whether pkt, with header h, is an ICMP message
// that configures a link: IPv6 neighbour discovery (router solicitation
// and advertisement, neighbour solicitation and advertisement, redirect;
// RFC 4861, types 133-137), found past any hop-by-hop, routing,
// destination options and authentication headers, or an ICMPv4 redirect
// or router discovery message (types 5, 9, 10). Non-first fragments do not
// count: their ICMP header is in the first one, and the kernel drops
// fragmented neighbour discovery anyway (RFC 6980). A chain of more than
// maxExtHeaders extension headers, which no sender needs, counts as well:
// what it ends in is not looked at.
func linkControlICMP(pkt []byte, h ipHeader) bool {
	end := h.totalLen
	if h.version == 4 {
		if h.proto != protoICMP || binary.BigEndian.Uint16(pkt[6:8])&0x1fff != 0 || h.hdrLen >= end {
			return false
		}
		t := pkt[h.hdrLen]
		return t == icmpRedirect || t == icmpRouterAdvertisement || t == icmpRouterSolicitation
	}
	next, off := h.proto, h.hdrLen
	for range maxExtHeaders {
		switch next {
		case protoICMPv6:
			return off < end && pkt[off] >= icmpv6RouterSolicitation && pkt[off] <= icmpv6Redirect
		case ipv6HopByHop, ipv6Routing, ipv6DestOpts:
			if off+2 > end {
				return false
			}
			next, off = pkt[off], off+(int(pkt[off+1])+1)*8
		case ipv6AH:
			if off+2 > end {
				return false
			}
			next, off = pkt[off], off+(int(pkt[off+1])+2)*4
		case ipv6Fragment:
			if off+8 > end || binary.BigEndian.Uint16(pkt[off+2:off+4])>>3 != 0 {
				return false
			}
			next, off = pkt[off], off+8
		default:
			return false
		}
	}
	return true
}

// localNetworks returns the valid prefixes of nets, masked, at most
// maxLocalNetworks of them. A /0, which no connected network is, is left
// out rather than made to drop a whole family.
func localNetworks(nets []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range nets {
		if len(out) == maxLocalNetworks {
			break
		}
		if p.IsValid() && p.Bits() > 0 {
			out = append(out, p.Masked())
		}
	}
	return out
}
