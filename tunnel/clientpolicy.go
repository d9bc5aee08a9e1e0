package tunnel

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	connectip "github.com/quic-go/connect-ip-go"
)

// The client trusts the server for packets, not for the host: what the
// server assigns, advertises and names as DNS servers is checked against
// the user's policy and the host's own networks before anything of it
// reaches the TUN, the routing table or the resolver. Every list from the
// server is capped.
const (
	// MaxAssignedAddresses caps the addresses one ADDRESS_ASSIGN may give
	// per address family. A client uses one of each; 16 leaves room for a
	// server that hands out a few more and keeps the own-address check
	// (a linear scan per packet) cheap.
	MaxAssignedAddresses = 16
	// MaxRoutes caps the prefixes the advertised routes expand to. Each
	// becomes a kernel route and a line in the state file; 1,024 covers
	// any split tunnel configured by hand (a range expands to at most 62
	// IPv4 or 254 IPv6 prefixes, so even unaligned IPv6 ranges fit by the
	// handful) while a 64 KiB advertisement, which could otherwise expand
	// to hundreds of thousands of routes, stays a few milliseconds of
	// netlink work and a few tens of KiB of state.
	MaxRoutes = 1024
	// MaxDNSServers caps the DNS servers the client accepts from one
	// DNS_ASSIGN. Resolvers read at most 3 nameserver lines (resolv.conf's
	// MAXNS); 8 leaves room for both families and for resolved.
	MaxDNSServers = 8
)

// ErrAssignmentRefused matches the [AssignmentError] that [Connect]
// returns when the server's address assignment breaks [ClientPolicy]'s
// rules.
var ErrAssignmentRefused = errors.New("connect-ip: address assignment refused")

// AssignmentError says which assigned addresses [Connect] refused and why.
type AssignmentError struct {
	// Refused lists the entries refused, each with why, or says how many
	// addresses were over the cap.
	Refused string
	// Local is set when some were refused only for overlapping the host's
	// own networks, which ClientPolicy.AllowLocalOverlap would accept.
	Local bool
}

func (e *AssignmentError) Error() string { return ErrAssignmentRefused.Error() + ": " + e.Refused }

// Is makes an AssignmentError match ErrAssignmentRefused.
func (e *AssignmentError) Is(target error) bool { return target == ErrAssignmentRefused }

// ClientPolicy bounds what a client takes from the server. Its zero value
// refuses only what no host should accept (loopback, multicast, broadcast,
// link-local and the server's own address as assigned addresses; routes
// with a protocol; DNS servers outside the routes), and lets every
// advertised route in.
type ClientPolicy struct {
	// Routes, if any, limit the routes the client installs (--route): the
	// advertised routes are cut to them, and what lies outside is dropped.
	Routes []netip.Prefix
	// Excludes are never routed into the tunnel (--exclude).
	Excludes []netip.Prefix
	// Local are the host's own addresses and connected networks (the LAN),
	// read once at set-up: they are never routed into the tunnel, no DNS
	// server may lie in them and no assigned address may overlap them
	// unless AllowLocalOverlap is set.
	Local []netip.Prefix
	// AllowLocalOverlap lets assigned addresses overlap Local.
	AllowLocalOverlap bool
}

// refuseReason is why an assigned address or a DNS server is refused.
type refuseReason string

const (
	refuseInvalid   refuseReason = "invalid"
	refuseLoopback  refuseReason = "loopback"
	refuseMulticast refuseReason = "multicast"
	refuseBroadcast refuseReason = "broadcast"
	refuseUnspec    refuseReason = "unspecified"
	refuseReserved  refuseReason = "reserved"
	refuseLinkLocal refuseReason = "link-local"
	refuseServer    refuseReason = "the server's address"
	refuseLocal     refuseReason = "the host's own or connected network"
	refuseTooMany   refuseReason = "over the cap"
	refuseExcluded  refuseReason = "excluded"
	refuseNotRouted refuseReason = "not routed through the tunnel"
)

// badAddr says why a must not be the host's (an assigned address) or
// trusted as a resolver, or "" if it may: the special-purpose addresses no
// server has any business handing out.
func badAddr(a netip.Addr) refuseReason {
	switch {
	case !a.IsValid() || a.Is4In6() || a.Zone() != "":
		return refuseInvalid
	case a.IsUnspecified():
		return refuseUnspec
	case a.IsLoopback():
		return refuseLoopback
	case a.IsMulticast():
		return refuseMulticast
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return refuseBroadcast
	case a.Is4() && (a.As4()[0] == 0 || a.As4()[0] >= 240):
		// "This network" (RFC 1122 §3.2.1.3: never a source) and
		// the reserved 240.0.0.0/4 (RFC 1112 §4).
		return refuseReserved
	case a.IsLinkLocalUnicast():
		return refuseLinkLocal
	}
	return ""
}

// refused lists the entries a check refused, with why, for one log line
// and one error.
type refused[T fmt.Stringer] []refusedEntry[T]

type refusedEntry[T fmt.Stringer] struct {
	what T
	why  refuseReason
}

func (r refused[T]) String() string {
	s := make([]string, len(r))
	for i, e := range r {
		s[i] = e.what.String() + " (" + string(e.why) + ")"
	}
	return strings.Join(s, ", ")
}

// checkAssignment checks the addresses the server assigned: none may be
// special-purpose (badAddr), contain the server's address, overlap the
// host's own networks (unless allowed) or exceed MaxAssignedAddresses per
// family. It returns the lease as host prefixes (/32, /128), the only form
// that goes on the TUN: a shorter prefix there would add a route for the
// whole prefix to the main table, outside the user's policy. Duplicate
// addresses are folded into one. Any refused entry refuses the whole
// assignment.
func (p *ClientPolicy) checkAssignment(lease []netip.Prefix, server netip.Addr) ([]netip.Prefix, error) {
	var n4, n6 int
	for _, pfx := range lease {
		if pfx.Addr().Is4() {
			n4++
		} else {
			n6++
		}
	}
	if n4 > MaxAssignedAddresses || n6 > MaxAssignedAddresses {
		return nil, &AssignmentError{Refused: fmt.Sprintf("%d IPv4 and %d IPv6 addresses, more than %d of one family", n4, n6, MaxAssignedAddresses)}
	}
	var bad refused[netip.Prefix]
	var out []netip.Prefix
	for _, pfx := range lease {
		a := pfx.Addr()
		why := badAddr(a)
		switch {
		case why != "":
		case !pfx.IsValid():
			why = refuseInvalid
		case server.IsValid() && pfx.Contains(server.Unmap()):
			why = refuseServer
		case !p.AllowLocalOverlap && overlapsAny(pfx, p.Local):
			why = refuseLocal
		}
		if why != "" {
			bad = append(bad, refusedEntry[netip.Prefix]{pfx, why})
			continue
		}
		if host := netip.PrefixFrom(a, a.BitLen()); !slices.Contains(out, host) {
			out = append(out, host)
		}
	}
	if len(bad) > 0 {
		return nil, &AssignmentError{Refused: bad.String(), Local: slices.ContainsFunc(bad, func(e refusedEntry[netip.Prefix]) bool { return e.why == refuseLocal })}
	}
	return out, nil
}

// throws returns what is never routed into the tunnel whatever the server
// advertises: the user's excludes, the host's own networks and the
// server's address. They become throw routes in the tunnel's table.
func (p *ClientPolicy) throws(server netip.Addr) []netip.Prefix {
	out := slices.Clone(p.Excludes)
	for _, l := range p.Local {
		if !slices.Contains(out, l) {
			out = append(out, l)
		}
	}
	if server.IsValid() {
		server = server.Unmap()
		if h := netip.PrefixFrom(server, server.BitLen()); !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	return out
}

// routeReport counts what clientRoutes refused, for one log line per
// advertisement.
type routeReport struct {
	protocol int // protocol-scoped ranges: plain routes cannot honour them
	overCap  int // ranges that would have taken the routes past MaxRoutes
	outside  int // ranges wholly outside the --route limits or thrown
}

func (r routeReport) any() bool { return r.protocol+r.overCap+r.outside > 0 }

// clientRoutes turns an advertisement into the prefixes the client routes
// into the tunnel, inside the policy: protocol-scoped ranges are refused
// (a route matches every protocol: installing one would widen the range
// to all of them); the rest is expanded to prefixes and cut to the --route
// limits; prefixes wholly inside a throw (throws: excludes, the host's
// networks, the server) are dropped, and the throws, installed as throw
// routes, cut the others. A range whose prefixes would take the total past
// MaxRoutes is refused as a whole, and so is every range after it (the
// advertisement's order, RFC 9484 §4.7.3: IPv4 first, ascending), so a
// flood costs at most MaxRoutes routes and about as much work.
func (p *ClientPolicy) clientRoutes(adv []connectip.IPRoute, throws []netip.Prefix) ([]netip.Prefix, routeReport) {
	var rep routeReport
	var out []netip.Prefix
	seen := make(map[netip.Prefix]bool)
	for _, r := range adv {
		switch {
		case r.IPProtocol != 0:
			rep.protocol++
			continue
		case rep.overCap > 0:
			// The cap was reached: the ranges after it are refused
			// unexpanded, so a flood costs at most MaxRoutes
			// prefixes and one range's worth of work.
			rep.overCap++
			continue
		}
		var mine []netip.Prefix
		for _, pfx := range r.Prefixes() {
			for _, q := range limitPrefix(pfx, p.Routes) {
				if !seen[q] && !coveredByAny(q, throws) {
					seen[q] = true
					mine = append(mine, q)
				}
			}
		}
		switch {
		case len(mine) == 0:
			rep.outside++
		case len(out)+len(mine) > MaxRoutes:
			rep.overCap++
		default:
			out = append(out, mine...)
			continue
		}
		for _, q := range mine {
			delete(seen, q)
		}
	}
	return out, rep
}

// limitPrefix returns p cut to limits: p itself without limits, else for
// each limit that overlaps p the smaller of the two.
func limitPrefix(p netip.Prefix, limits []netip.Prefix) []netip.Prefix {
	if len(limits) == 0 {
		return []netip.Prefix{p}
	}
	var out []netip.Prefix
	for _, l := range limits {
		if !l.Overlaps(p) {
			continue
		}
		q := p
		if l.Bits() > p.Bits() {
			q = l.Masked()
		}
		if !slices.Contains(out, q) {
			out = append(out, q)
		}
	}
	return out
}

// acceptDNS returns the DNS servers the client points the host at, at most
// MaxDNSServers of them, from the first 4×MaxDNSServers offered: only
// those routed through the tunnel (inside routes and no throw) that are
// not special-purpose (badAddr). The host's
// own networks are throws, so no LAN resolver is taken from the server.
func acceptDNS(servers []netip.Addr, routes, throws []netip.Prefix) ([]netip.Addr, refused[netip.Addr]) {
	var bad refused[netip.Addr]
	var out []netip.Addr
	for i, a := range servers {
		why := badAddr(a)
		switch {
		case len(out) == MaxDNSServers || i >= 4*MaxDNSServers:
			// Enough, or enough looked at: a DNS_ASSIGN of
			// thousands costs no more than one of 32.
			why = refuseTooMany
		case why != "":
		case slices.ContainsFunc(throws, func(p netip.Prefix) bool { return p.Contains(a) }):
			why = refuseExcluded
		case !slices.ContainsFunc(routes, func(p netip.Prefix) bool { return p.Contains(a) }):
			why = refuseNotRouted
		case slices.Contains(out, a):
			continue
		}
		if why != "" {
			bad = append(bad, refusedEntry[netip.Addr]{a, why})
			continue
		}
		out = append(out, a)
	}
	return out, bad
}

// overlapsAny reports whether p overlaps one of ps.
func overlapsAny(p netip.Prefix, ps []netip.Prefix) bool {
	return slices.ContainsFunc(ps, p.Overlaps)
}

// coveredByAny reports whether p lies wholly inside one of ps.
func coveredByAny(p netip.Prefix, ps []netip.Prefix) bool {
	return slices.ContainsFunc(ps, func(q netip.Prefix) bool {
		return q.Addr().Is4() == p.Addr().Is4() && q.Bits() <= p.Bits() && q.Contains(p.Addr())
	})
}
