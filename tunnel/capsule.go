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

// The CONNECT-IP capsules (RFC 9484 §4.7) and DNS_ASSIGN
// (draft-ietf-masque-connect-ip-dns). Both ends read and write their
// request streams themselves (client.go, control.go): connect-ip-go's
// codecs are not exported, and its stream reader neither counts what it
// drops nor resets a stream with the code RFC 9297 §3.3 asks for. Every
// parser reads one capsule's value and nothing past it; a malformed capsule
// aborts the session (RFC 9484 §4.7).

const (
	capsuleAddressAssign      http3.CapsuleType = 0x01
	capsuleAddressRequest     http3.CapsuleType = 0x02
	capsuleRouteAdvertisement http3.CapsuleType = 0x03
	capsuleDNSAssign          http3.CapsuleType = 0x1ace79ec

	// maxCapsuleLen bounds a control capsule we read: a few thousand
	// routes, far more than any server advertises.
	maxCapsuleLen = 64 << 10
)

var (
	errMalformedCapsule = errors.New("malformed capsule")
	// errCapsuleTooLarge is a control capsule longer than maxCapsuleLen:
	// not read, and the stream is aborted.
	errCapsuleTooLarge = errors.New("capsule too large")
)

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errMalformedCapsule, fmt.Sprintf(format, args...))
}

// capsuleBytes reads a capsule's whole value (at most maxCapsuleLen).
func capsuleBytes(r http3.CapsuleReader) ([]byte, error) {
	if r.Remaining() > maxCapsuleLen {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", errCapsuleTooLarge, r.Remaining(), maxCapsuleLen)
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

// addressEntry is one Assigned Address of ADDRESS_ASSIGN or one Requested
// Address of ADDRESS_REQUEST (RFC 9484 §4.7.1, §4.7.2): they share a
// layout.
type addressEntry struct {
	reqID  uint64 // 0: an unsolicited assignment
	prefix netip.Prefix
}

// parseAddresses parses a list of { Request ID (i), IP Version (8),
// IP Address (32/128), IP Prefix Length (8) }.
func parseAddresses(b []byte) ([]addressEntry, error) {
	var out []addressEntry
	for len(b) > 0 {
		id, n, err := quicvarint.Parse(b)
		if err != nil {
			return nil, malformed("truncated request ID")
		}
		b = b[n:]
		if len(b) < 1 {
			return nil, malformed("truncated address")
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
		out = append(out, addressEntry{reqID: id, prefix: p})
		b = rest[1:]
	}
	return out, nil
}

// parseAddressAssign parses ADDRESS_ASSIGN and returns the assigned
// prefixes; an empty capsule withdraws all.
func parseAddressAssign(b []byte) ([]netip.Prefix, error) {
	es, err := parseAddresses(b)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, e := range es {
		out = append(out, e.prefix)
	}
	return out, nil
}

// parseAddressRequest parses ADDRESS_REQUEST: at least one Requested
// Address, none with Request ID 0 (RFC 9484 §4.7.2).
func parseAddressRequest(b []byte) ([]addressEntry, error) {
	es, err := parseAddresses(b)
	if err != nil {
		return nil, err
	}
	if len(es) == 0 {
		return nil, malformed("ADDRESS_REQUEST without addresses")
	}
	for _, e := range es {
		if e.reqID == 0 {
			return nil, malformed("ADDRESS_REQUEST with request ID 0")
		}
	}
	return es, nil
}

// appendCapsule appends a capsule of type t whose value is v.
func appendCapsule(b []byte, t http3.CapsuleType, v []byte) []byte {
	b = quicvarint.Append(b, uint64(t))
	b = quicvarint.Append(b, uint64(len(v)))
	return append(b, v...)
}

// appendAddresses appends an ADDRESS_ASSIGN or ADDRESS_REQUEST capsule
// (typ) listing es; every prefix must be valid and masked.
func appendAddresses(b []byte, typ http3.CapsuleType, es []addressEntry) []byte {
	var v []byte
	for _, e := range es {
		v = quicvarint.Append(v, e.reqID)
		if e.prefix.Addr().Is4() {
			v = append(v, 4)
		} else {
			v = append(v, 6)
		}
		v = append(v, e.prefix.Addr().AsSlice()...)
		v = append(v, byte(e.prefix.Bits()))
	}
	return appendCapsule(b, typ, v)
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

// appendRouteAdvertisement appends a ROUTE_ADVERTISEMENT capsule; rs must
// be ordered as parseRouteAdvertisement requires (sortMergeRoutes).
func appendRouteAdvertisement(b []byte, rs []connectip.IPRoute) []byte {
	var v []byte
	for _, r := range rs {
		if r.StartIP.Is4() {
			v = append(v, 4)
		} else {
			v = append(v, 6)
		}
		v = append(v, r.StartIP.AsSlice()...)
		v = append(v, r.EndIP.AsSlice()...)
		v = append(v, r.IPProtocol)
	}
	return appendCapsule(b, capsuleRouteAdvertisement, v)
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

// appendDNSAssign appends a DNS_ASSIGN capsule with one DNS Configuration
// that names one nameserver (Service Priority 1: SVCB ServiceMode) at the
// addresses servers, with no authentication domain name, service
// parameters, internal or search domains.
func appendDNSAssign(b []byte, servers []netip.Addr) []byte {
	var v4, v6 []netip.Addr
	for _, a := range servers {
		if a.Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a.WithZone(""))
		}
	}
	v := quicvarint.Append(nil, 1) // nameservers
	v = append(v, 0, 1)            // service priority
	v = quicvarint.Append(v, uint64(len(v4)))
	for _, a := range v4 {
		v = append(v, a.AsSlice()...)
	}
	v = quicvarint.Append(v, uint64(len(v6)))
	for _, a := range v6 {
		v = append(v, a.AsSlice()...)
	}
	v = append(v, 0, 0, 0, 0) // authentication domain name, service parameters, internal and search domains: none
	return appendCapsule(b, capsuleDNSAssign, v)
}
