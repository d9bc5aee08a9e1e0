package policy

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
)

// Reason says why a destination is refused. Its String values are stable
// snake_case names, fit for metric labels.
type Reason uint8

// Reasons returned by [Destinations.Check].
const (
	ReasonNone          Reason = iota // "none": allowed
	ReasonLoopback                    // "loopback": 127.0.0.0/8, ::1
	ReasonLinkLocal                   // "link_local": 169.254.0.0/16, fe80::/10
	ReasonMulticast                   // "multicast": 224.0.0.0/4, ff00::/8, 255.255.255.255, the server's directed broadcasts
	ReasonMetadata                    // "metadata": cloud metadata services, 169.254.169.254, fd00:ec2::254
	ReasonUnspecified                 // "unspecified": 0.0.0.0/8, ::, and the invalid Addr
	ReasonServerAddress               // "server_address": one of the server's own addresses, or a subnet-router anycast address of its prefixes
	ReasonOtherClient                 // "other_client": inside a client address pool
	ReasonOperatorDeny                // "operator_deny": in DestinationsConfig.Deny
	numReasons
)

var reasonNames = [numReasons]string{
	ReasonNone:          "none",
	ReasonLoopback:      "loopback",
	ReasonLinkLocal:     "link_local",
	ReasonMulticast:     "multicast",
	ReasonMetadata:      "metadata",
	ReasonUnspecified:   "unspecified",
	ReasonServerAddress: "server_address",
	ReasonOtherClient:   "other_client",
	ReasonOperatorDeny:  "operator_deny",
}

// String returns the reason's snake_case name.
func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "reason_" + strconv.Itoa(int(r))
}

// Denied reports whether r refuses the destination (r != ReasonNone).
func (r Reason) Denied() bool { return r != ReasonNone }

// defaultDenies are the destinations a VPN server must never reach for a
// client unless the operator allows them (DESIGN.md "Security invariants").
var defaultDenies = []struct {
	prefix netip.Prefix
	reason Reason
}{
	{netip.MustParsePrefix("0.0.0.0/8"), ReasonUnspecified}, // RFC 1122 §3.2.1.3 "this network"
	{netip.MustParsePrefix("::/128"), ReasonUnspecified},
	{netip.MustParsePrefix("127.0.0.0/8"), ReasonLoopback},
	{netip.MustParsePrefix("::1/128"), ReasonLoopback},
	{netip.MustParsePrefix("169.254.0.0/16"), ReasonLinkLocal}, // RFC 3927
	{netip.MustParsePrefix("fe80::/10"), ReasonLinkLocal},      // RFC 4291 §2.5.6
	{netip.MustParsePrefix("224.0.0.0/4"), ReasonMulticast},
	{netip.MustParsePrefix("255.255.255.255/32"), ReasonMulticast}, // limited broadcast
	{netip.MustParsePrefix("ff00::/8"), ReasonMulticast},
	{netip.MustParsePrefix("169.254.169.254/32"), ReasonMetadata}, // AWS, GCP, Azure, ...
	{netip.MustParsePrefix("fd00:ec2::254/128"), ReasonMetadata},  // AWS IPv6 IMDS
}

// DestinationsConfig configures [NewDestinations].
type DestinationsConfig struct {
	// ServerAddrs are the server host's own addresses.
	ServerAddrs []netip.Addr
	// ServerPrefixes are the server host's interface addresses with their
	// prefix lengths, as "ip addr" shows them (198.18.2.1/24, not masked).
	// Each address is refused like ServerAddrs, and so are the other
	// addresses that the host takes as its own for the prefix: the IPv4
	// directed broadcast address of a prefix up to /30 (RFC 919;
	// ReasonMulticast, like the limited broadcast), and the IPv6
	// subnet-router anycast address of a prefix up to /126 (RFC 4291
	// §2.6.1, which a forwarding Linux host joins; ReasonServerAddress).
	ServerPrefixes []netip.Prefix
	// ClientPrefixes are the client address pools. Destinations inside them
	// are refused with ReasonOtherClient unless AllowClientToClient is set.
	ClientPrefixes []netip.Prefix
	// AllowClientToClient lets clients reach each other.
	AllowClientToClient bool
	// Allow lists destinations that override the default denies.
	Allow []netip.Prefix
	// Deny lists destinations the operator refuses (ReasonOperatorDeny).
	Deny []netip.Prefix
}

// Destinations decides which destination addresses a client may reach.
//
// By default everything is allowed except loopback, link-local, multicast
// and broadcast, cloud metadata services, unspecified addresses, the
// server's own addresses (with the broadcast and anycast addresses of its
// prefixes) and, unless AllowClientToClient, other clients' addresses. The operator adds denies with Deny and exceptions with Allow.
//
// The most specific (longest) matching prefix decides. Among equally long
// prefixes an operator Deny beats an Allow, and an Allow beats a default
// deny; so Allow 169.254.0.0/16 opens link-local but not the metadata
// service at 169.254.169.254/32.
//
// Destinations is immutable and safe for concurrent use.
type Destinations struct {
	v4, v6 rangeTable
}

// NewDestinations validates cfg and builds its lookup tables. Every prefix
// must be valid and masked. IPv4-mapped IPv6 addresses and prefixes (at
// least /96) are treated as IPv4. It reports all problems at once.
func NewDestinations(cfg DestinationsConfig) (*Destinations, error) {
	var errs []error
	valid := func(field string, i int, p netip.Prefix) bool {
		switch {
		case !p.IsValid():
			errs = append(errs, fmt.Errorf("%s[%d]: invalid prefix", field, i))
		case p != p.Masked():
			errs = append(errs, fmt.Errorf("%s[%d]: %v not masked (want %v)", field, i, p, p.Masked()))
		default:
			return true
		}
		return false
	}
	var rules []rule
	add := func(p netip.Prefix, r Reason, rank int) {
		rules = append(rules, rule{prefix: unmapPrefix(p), reason: r, rank: rank})
	}
	for _, d := range defaultDenies {
		add(d.prefix, d.reason, rankDefault(d.reason))
	}
	for i, a := range cfg.ServerAddrs {
		if !a.IsValid() {
			errs = append(errs, fmt.Errorf("ServerAddrs[%d]: invalid address", i))
			continue
		}
		a = a.Unmap().WithZone("")
		add(netip.PrefixFrom(a, a.BitLen()), ReasonServerAddress, rankDefault(ReasonServerAddress))
	}
	for i, p := range cfg.ServerPrefixes {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("ServerPrefixes[%d]: invalid prefix", i))
			continue
		}
		for _, r := range serverPrefixRules(p) {
			add(r.prefix, r.reason, rankDefault(r.reason))
		}
	}
	for i, p := range cfg.ClientPrefixes {
		if valid("ClientPrefixes", i, p) && !cfg.AllowClientToClient {
			add(p, ReasonOtherClient, rankDefault(ReasonOtherClient))
		}
	}
	for i, p := range cfg.Allow {
		if valid("Allow", i, p) {
			add(p, ReasonNone, rankAllow)
		}
	}
	for i, p := range cfg.Deny {
		if valid("Deny", i, p) {
			add(p, ReasonOperatorDeny, rankDeny)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	var v4, v6 []span
	for _, r := range rules {
		s := prefixSpan(r.prefix)
		s.reason, s.rank = r.reason, r.rank
		if r.prefix.Addr().Is4() {
			v4 = append(v4, s)
		} else {
			v6 = append(v6, s)
		}
	}
	return &Destinations{
		v4: buildTable(v4, u128{0, 1<<32 - 1}),
		v6: buildTable(v6, u128{^uint64(0), ^uint64(0)}),
	}, nil
}

// Check returns why dst is refused, or ReasonNone if it is allowed. An
// IPv4-mapped IPv6 address is checked as its IPv4 address; zones are
// ignored; the invalid Addr is ReasonUnspecified.
//
// Check is on the per-packet path: it does not allocate and takes
// O(log n) time in the number of configured prefixes.
func (d *Destinations) Check(dst netip.Addr) Reason {
	switch {
	case dst.Is4In6():
		b := dst.As16()
		return d.v4.lookup(u128{0, uint64(binary.BigEndian.Uint32(b[12:]))})
	case dst.Is4():
		b := dst.As4()
		return d.v4.lookup(u128{0, uint64(binary.BigEndian.Uint32(b[:]))})
	case dst.Is6():
		b := dst.As16()
		return d.v6.lookup(u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])})
	default:
		return ReasonUnspecified
	}
}

// serverPrefixRules returns the single-address rules for the server's
// interface address p (address and prefix length): the address, and its
// prefix's directed broadcast (IPv4) or subnet-router anycast (IPv6)
// address.
func serverPrefixRules(p netip.Prefix) []rule {
	a := p.Addr().WithZone("")
	bits := p.Bits()
	if a.Is4In6() {
		a, bits = a.Unmap(), max(bits-96, 0)
	}
	host := func(b netip.Addr) netip.Prefix { return netip.PrefixFrom(b, b.BitLen()) }
	rules := []rule{{prefix: host(a), reason: ReasonServerAddress}}
	switch {
	case a.Is4() && bits <= 30:
		b := a.As4()
		v := binary.BigEndian.Uint32(b[:]) | uint32(1<<(32-bits)-1)
		bcast := netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, v)))
		rules = append(rules, rule{prefix: host(bcast), reason: ReasonMulticast})
	case a.Is6() && bits <= 126:
		rules = append(rules, rule{prefix: host(netip.PrefixFrom(a, bits).Masked().Addr()), reason: ReasonServerAddress})
	}
	return rules
}

// Precedence among rules with the same prefix: lower rank wins.
const (
	rankDeny  = 0
	rankAllow = 1
)

// rankDefault orders the default denies after Deny and Allow. For the same
// prefix the more specific reason wins (metadata before link-local, the
// server's own address before other clients).
func rankDefault(r Reason) int {
	switch r {
	case ReasonMetadata:
		return 2
	case ReasonUnspecified:
		return 3
	case ReasonLoopback:
		return 4
	case ReasonServerAddress:
		return 5
	case ReasonLinkLocal:
		return 6
	case ReasonMulticast:
		return 7
	default:
		return 8
	}
}

// rule is one configured prefix and its verdict.
type rule struct {
	prefix netip.Prefix
	reason Reason
	rank   int
}

// unmapPrefix turns an IPv4-mapped IPv6 prefix of at least /96 into the
// IPv4 prefix it covers.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}

// u128 is an address as an unsigned integer; IPv4 uses lo only.
type u128 struct{ hi, lo uint64 }

func (a u128) less(b u128) bool { return a.hi < b.hi || a.hi == b.hi && a.lo < b.lo }

func (a u128) compare(b u128) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	return cmp.Compare(a.lo, b.lo)
}

func (a u128) addOne() u128 {
	lo := a.lo + 1
	hi := a.hi
	if lo == 0 {
		hi++
	}
	return u128{hi, lo}
}

// span is the address range [start, end] of a prefix with its verdict.
type span struct {
	start, end u128
	reason     Reason
	rank       int
}

// prefixSpan returns the address range of the masked prefix p.
func prefixSpan(p netip.Prefix) span {
	a := p.Addr()
	if a.Is4() {
		b := a.As4()
		start := uint64(binary.BigEndian.Uint32(b[:]))
		return span{start: u128{0, start}, end: u128{0, start | (1<<(32-p.Bits()) - 1)}}
	}
	b := a.As16()
	start := u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
	host := 128 - p.Bits()
	var mask u128 // host bits set
	switch {
	case host >= 64:
		mask = u128{hi: 1<<(host-64) - 1, lo: ^uint64(0)} // host == 128: 1<<64 == 0
	default:
		mask = u128{lo: 1<<host - 1}
	}
	return span{start: start, end: u128{start.hi | mask.hi, start.lo | mask.lo}}
}

// rangeTable partitions an address family into consecutive ranges:
// range i is [starts[i], starts[i+1]) and has verdict reasons[i].
// starts[0] is always 0.
type rangeTable struct {
	starts  []u128
	reasons []Reason
}

// lookup returns the verdict of the range holding k.
func (t *rangeTable) lookup(k u128) Reason {
	// Find the last start <= k; starts[0] == 0 <= k.
	lo, hi := 0, len(t.starts)
	for hi-lo > 1 {
		m := int(uint(lo+hi) >> 1)
		if k.less(t.starts[m]) {
			hi = m
		} else {
			lo = m
		}
	}
	return t.reasons[lo]
}

// buildTable flattens prefixes into a rangeTable whose ranges carry the
// verdict of the longest matching prefix. Prefixes are either nested or
// disjoint, so one sweep in start order with a stack of enclosing prefixes
// suffices. max is the family's highest address.
func buildTable(spans []span, max u128) rangeTable {
	// Equal prefixes: keep the best rank. Then order by start, outer first.
	slices.SortFunc(spans, func(a, b span) int {
		if c := a.start.compare(b.start); c != 0 {
			return c
		}
		if c := b.end.compare(a.end); c != 0 {
			return c
		}
		return cmp.Compare(a.rank, b.rank)
	})
	spans = slices.CompactFunc(spans, func(a, b span) bool { return a.start == b.start && a.end == b.end })

	var t rangeTable
	emit := func(pos u128, r Reason) {
		n := len(t.starts)
		if n > 0 && t.starts[n-1] == pos {
			t.reasons[n-1] = r
			if n > 1 && t.reasons[n-2] == r {
				t.starts, t.reasons = t.starts[:n-1], t.reasons[:n-1]
			}
			return
		}
		if n > 0 && t.reasons[n-1] == r {
			return
		}
		t.starts = append(t.starts, pos)
		t.reasons = append(t.reasons, r)
	}
	// pop removes the innermost open prefix and starts the range after it.
	var stack []span
	pop := func() {
		end := stack[len(stack)-1].end
		stack = stack[:len(stack)-1]
		if end == max {
			return // nothing follows
		}
		r := ReasonNone
		if len(stack) > 0 {
			r = stack[len(stack)-1].reason
		}
		emit(end.addOne(), r)
	}
	emit(u128{}, ReasonNone)
	for _, s := range spans {
		for len(stack) > 0 && stack[len(stack)-1].end.less(s.start) {
			pop()
		}
		stack = append(stack, s)
		emit(s.start, s.reason)
	}
	for len(stack) > 0 {
		pop()
	}
	return t
}
