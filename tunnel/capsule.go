package tunnel

import (
	"errors"
	"fmt"
	"io"
	"net/netip"

	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// The client's side of the CONNECT-IP capsules (RFC 9484 §4.7) and of
// DNS_ASSIGN (draft-ietf-masque-connect-ip-dns), which the server sends
// with connect-ip-go. The client reads its request stream itself (see
// ipclient.go), so it parses them here; connect-ip-go's parsers are not
// exported. Every function reads one capsule's value from r and nothing
// past it; a malformed capsule aborts the session (RFC 9484 §4.7).

const (
	capsuleAddressAssign      http3.CapsuleType = 0x01
	capsuleAddressRequest     http3.CapsuleType = 0x02
	capsuleRouteAdvertisement http3.CapsuleType = 0x03
	capsuleDNSAssign          http3.CapsuleType = 0x1ace79ec

	// maxCapsuleLen bounds a control capsule we read: a few thousand
	// routes, far more than any server advertises.
	maxCapsuleLen = 64 << 10
)

var errMalformedCapsule = errors.New("malformed capsule")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errMalformedCapsule, fmt.Sprintf(format, args...))
}

// capsuleBytes reads a capsule's whole value (at most maxCapsuleLen).
func capsuleBytes(r http3.CapsuleReader) ([]byte, error) {
	if r.Remaining() > maxCapsuleLen {
		return nil, malformed("capsule of %d bytes", r.Remaining())
	}
	b := make([]byte, r.Remaining())
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

// takeAddr reads an IP Version byte's address from b.
func takeAddr(b []byte, version byte) (netip.Addr, []byte, error) {
	switch version {
	case 4:
		if len(b) < 4 {
			return netip.Addr{}, nil, malformed("truncated IPv4 address")
		}
		return netip.AddrFrom4([4]byte(b[:4])), b[4:], nil
	case 6:
		if len(b) < 16 {
			return netip.Addr{}, nil, malformed("truncated IPv6 address")
		}
		return netip.AddrFrom16([16]byte(b[:16])), b[16:], nil
	default:
		return netip.Addr{}, nil, malformed("IP version %d", version)
	}
}

// parseAddressAssign parses ADDRESS_ASSIGN: Assigned Address { Request ID
// (i), IP Version (8), IP Address (32/128), IP Prefix Length (8) } ...
// It returns the assigned prefixes; an empty capsule withdraws all.
func parseAddressAssign(b []byte) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for len(b) > 0 {
		_, n, err := quicvarint.Parse(b)
		if err != nil {
			return nil, malformed("truncated request ID")
		}
		b = b[n:]
		if len(b) < 1 {
			return nil, malformed("truncated assigned address")
		}
		v := b[0]
		a, rest, err := takeAddr(b[1:], v)
		if err != nil {
			return nil, err
		}
		if len(rest) < 1 {
			return nil, malformed("truncated prefix length")
		}
		p, err := a.Prefix(int(rest[0]))
		if err != nil || int(rest[0]) > a.BitLen() {
			return nil, malformed("prefix length %d for IPv%d", rest[0], v)
		}
		if p.Addr() != a {
			// RFC 9484 §4.7.1: bits beyond the prefix length are zero.
			return nil, malformed("address %s has bits set past /%d", a, rest[0])
		}
		out = append(out, p)
		b = rest[1:]
	}
	return out, nil
}

// parseRouteAdvertisement parses ROUTE_ADVERTISEMENT: IP Address Range {
// IP Version (8), Start IP, End IP, IP Protocol (8) } ... RFC 9484 §4.7.3:
// start ≤ end, and ranges ordered by version, then protocol, then start,
// without overlap within one version and protocol.
func parseRouteAdvertisement(b []byte) ([]connectip.IPRoute, error) {
	var out []connectip.IPRoute
	for len(b) > 0 {
		v := b[0]
		start, rest, err := takeAddr(b[1:], v)
		if err != nil {
			return nil, err
		}
		end, rest, err := takeAddr(rest, v)
		if err != nil {
			return nil, err
		}
		if len(rest) < 1 {
			return nil, malformed("truncated IP protocol")
		}
		r := connectip.IPRoute{StartIP: start, EndIP: end, IPProtocol: rest[0]}
		b = rest[1:]
		if end.Less(start) {
			return nil, malformed("range %s-%s ends before it starts", start, end)
		}
		if len(out) > 0 && !routeFollows(out[len(out)-1], r) {
			return nil, malformed("route ranges out of order or overlapping")
		}
		out = append(out, r)
	}
	return out, nil
}

// routeFollows reports whether r may come after p in a route
// advertisement.
func routeFollows(p, r connectip.IPRoute) bool {
	pv, rv := p.StartIP.Is6(), r.StartIP.Is6()
	switch {
	case pv != rv:
		return rv // IPv4 before IPv6
	case p.IPProtocol != r.IPProtocol:
		return p.IPProtocol < r.IPProtocol
	default:
		return p.EndIP.Less(r.StartIP)
	}
}

// parseDNSAssign parses DNS_ASSIGN and returns the nameservers' addresses
// in order. Each DNS Configuration is { Nameserver Count (i), Nameserver
// ..., Internal Domain Count (i), Domain ..., Search Domain Count (i),
// Domain ... }; a Nameserver is { Service Priority (16), IPv4 Count (i),
// IPv4 ..., IPv6 Count (i), IPv6 ..., Authentication Domain Name,
// Service Parameters Length (i), Service Parameters }; a Domain is a
// length-prefixed name. Names and service parameters are skipped.
func parseDNSAssign(b []byte) ([]netip.Addr, error) {
	var out []netip.Addr
	count := func() (uint64, error) {
		v, n, err := quicvarint.Parse(b)
		if err != nil {
			return 0, malformed("truncated count")
		}
		b = b[n:]
		// Each counted item takes at least one byte.
		if v > uint64(len(b)) {
			return 0, malformed("count %d exceeds the capsule", v)
		}
		return v, nil
	}
	skip := func() error { // a length-prefixed field
		l, err := count()
		if err != nil {
			return err
		}
		b = b[l:]
		return nil
	}
	addrs := func(version byte) error {
		n, err := count()
		if err != nil {
			return err
		}
		for range n {
			var a netip.Addr
			if a, b, err = takeAddr(b, version); err != nil {
				return err
			}
			out = append(out, a)
		}
		return nil
	}
	for len(b) > 0 {
		nameservers, err := count()
		if err != nil {
			return nil, err
		}
		for range nameservers {
			if len(b) < 2 {
				return nil, malformed("truncated nameserver")
			}
			b = b[2:] // service priority
			if err := addrs(4); err != nil {
				return nil, err
			}
			if err := addrs(6); err != nil {
				return nil, err
			}
			if err := skip(); err != nil { // authentication domain name
				return nil, err
			}
			if err := skip(); err != nil { // service parameters
				return nil, err
			}
		}
		for range 2 { // internal domains, search domains
			domains, err := count()
			if err != nil {
				return nil, err
			}
			for range domains {
				if err := skip(); err != nil {
					return nil, err
				}
			}
		}
	}
	return out, nil
}
