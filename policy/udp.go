package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// A UDPPattern is one entry of a CONNECT-UDP allow-list: which target hosts
// and which ports. Its text form is HOST:PORT, where HOST is
//
//   - "*": every target;
//   - a DNS name, "dns.example": exactly that name;
//   - a wildcard name, "*.example": every name below example (not example
//     itself);
//   - an IP address or a CIDR prefix, "198.18.2.0/24"; IPv6 ones in
//     brackets, "[2001:db8::/32]";
//
// and PORT is "*", a port 1-65535, or a range "LO-HI".
//
// Names match the name the client asked for (case-insensitively, ignoring
// one trailing dot); addresses and prefixes match the address the server
// resolved and would dial. A name pattern never matches a target given as
// an IP literal. The destination checks of [Destinations] apply on top of
// an allow-list: a pattern cannot open loopback or the metadata service
// unless the operator allows those addresses there too.
//
// The zero UDPPattern matches nothing.
type UDPPattern struct {
	kind   udpHostKind
	name   string       // lower case, no trailing dot; for udpSuffix ".example"
	prefix netip.Prefix // udpPrefix only; masked, IPv4-mapped unmapped
	lo, hi uint16       // port range, lo <= hi; 0 only in the zero pattern
}

type udpHostKind uint8

const (
	udpNone   udpHostKind = iota // the zero pattern
	udpAny                       // "*"
	udpName                      // "dns.example"
	udpSuffix                    // "*.example"
	udpPrefix                    // "198.18.2.0/24", "198.18.2.2"
)

// maxNameLen is the longest DNS name in text form without the trailing dot
// (RFC 1035 §2.3.4: 255 octets on the wire).
const maxNameLen = 253

// ParseUDPPattern parses the text form HOST:PORT of a [UDPPattern].
func ParseUDPPattern(s string) (UDPPattern, error) {
	var p UDPPattern
	i := strings.LastIndexByte(s, ':')
	if strings.HasPrefix(s, "[") {
		// The port follows the bracket: "[2001:db8::1]" has no port.
		if j := strings.IndexByte(s, ']'); j > 0 && (len(s) == j+1 || s[j+1] != ':') {
			i = -1
		}
	}
	if i < 0 {
		return p, fmt.Errorf("udp pattern %q: want HOST:PORT", s)
	}
	host, port := s[:i], s[i+1:]
	lo, hi, err := parsePortRange(port)
	if err != nil {
		return p, fmt.Errorf("udp pattern %q: %v", s, err)
	}
	p.lo, p.hi = lo, hi
	switch {
	case host == "*":
		p.kind = udpAny
	case strings.HasPrefix(host, "["):
		inner, ok := strings.CutSuffix(host[1:], "]")
		if !ok {
			return UDPPattern{}, fmt.Errorf("udp pattern %q: unterminated [", s)
		}
		pf, err := parseHostPrefix(inner)
		if err != nil || !pf.Addr().Is6() || pf.Addr().Is4In6() && pf.Bits() < 96 {
			return UDPPattern{}, fmt.Errorf("udp pattern %q: %q is not an IPv6 address or prefix", s, inner)
		}
		p.kind, p.prefix = udpPrefix, unmapPrefix(pf)
	case strings.ContainsRune(host, ':'):
		return UDPPattern{}, fmt.Errorf("udp pattern %q: put an IPv6 address in brackets, [%s]:%s", s, host, port)
	case startsLikeAddr(host):
		pf, err := parseHostPrefix(host)
		if err != nil || !pf.Addr().Is4() {
			return UDPPattern{}, fmt.Errorf("udp pattern %q: %q is not an IPv4 address or prefix", s, host)
		}
		p.kind, p.prefix = udpPrefix, pf
	default:
		name, wild := strings.CutPrefix(host, "*.")
		name = strings.ToLower(strings.TrimSuffix(name, "."))
		if !ValidHostName(name) {
			return UDPPattern{}, fmt.Errorf("udp pattern %q: %q is not *, a DNS name, *.NAME, an address or a prefix", s, host)
		}
		if wild {
			p.kind, p.name = udpSuffix, "."+name
		} else {
			p.kind, p.name = udpName, name
		}
	}
	return p, nil
}

// startsLikeAddr reports whether host is meant as an IPv4 address or
// prefix rather than a name: digits, dots and at most one slash, with a
// digit last before any slash. (A DNS name's last label is never all
// digits in practice, RFC 3696 §2.)
func startsLikeAddr(host string) bool {
	addr, _, _ := strings.Cut(host, "/")
	if addr == "" {
		return false
	}
	for i := 0; i < len(addr); i++ {
		if c := addr[i]; c != '.' && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// parseHostPrefix parses an address (a host prefix) or a masked prefix.
// Zones are refused.
func parseHostPrefix(s string) (netip.Prefix, error) {
	if strings.ContainsRune(s, '/') {
		pf, err := netip.ParsePrefix(s)
		if err != nil {
			return pf, err
		}
		if pf != pf.Masked() {
			return pf, fmt.Errorf("%s has host bits set", pf)
		}
		return pf, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if a.Zone() != "" {
		return netip.Prefix{}, errors.New("zone not allowed")
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// parsePortRange parses "*", "N" or "LO-HI" (1-65535, LO <= HI).
func parsePortRange(s string) (lo, hi uint16, err error) {
	if s == "*" {
		return 1, 65535, nil
	}
	a, b, isRange := strings.Cut(s, "-")
	if !isRange {
		b = a
	}
	l, err1 := parsePort(a)
	h, err2 := parsePort(b)
	if err1 != nil || err2 != nil || l > h {
		return 0, 0, fmt.Errorf("port %q is not *, 1-65535 or LO-HI", s)
	}
	return l, h, nil
}

// parsePort parses a decimal port 1-65535 without sign or leading zeros.
func parsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 || s[0] == '0' {
		return 0, errors.New("bad port")
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, errors.New("bad port")
	}
	return uint16(n), nil
}

// String returns the canonical text form of p, which [ParseUDPPattern]
// parses back to p.
func (p UDPPattern) String() string {
	var host string
	switch p.kind {
	case udpNone:
		return "none"
	case udpAny:
		host = "*"
	case udpName:
		host = p.name
	case udpSuffix:
		host = "*" + p.name
	case udpPrefix:
		if p.prefix.IsSingleIP() {
			host = p.prefix.Addr().String()
		} else {
			host = p.prefix.String()
		}
		if p.prefix.Addr().Is6() {
			host = "[" + host + "]"
		}
	}
	port := "*"
	switch {
	case p.lo == 1 && p.hi == 65535:
	case p.lo == p.hi:
		port = strconv.Itoa(int(p.lo))
	default:
		port = strconv.Itoa(int(p.lo)) + "-" + strconv.Itoa(int(p.hi))
	}
	return host + ":" + port
}

// Matches reports whether p allows a target. name is the DNS name the
// client asked for, "" if it asked for an IP literal; addr is the address
// the server resolved and would dial. Matches does not allocate.
func (p UDPPattern) Matches(name string, addr netip.Addr, port uint16) bool {
	if port < p.lo || port > p.hi || p.kind == udpNone {
		return false
	}
	name = strings.TrimSuffix(name, ".")
	switch p.kind {
	case udpAny:
		return true
	case udpName:
		return name != "" && strings.EqualFold(name, p.name)
	case udpSuffix:
		return len(name) > len(p.name) && strings.EqualFold(name[len(name)-len(p.name):], p.name)
	case udpPrefix:
		return p.prefix.Contains(addr.Unmap().WithZone(""))
	}
	return false
}

// UDPAllowList is a list of [UDPPattern]; a target is allowed if any
// pattern matches it.
type UDPAllowList []UDPPattern

// Allows reports whether a pattern of l matches; see [UDPPattern.Matches].
func (l UDPAllowList) Allows(name string, addr netip.Addr, port uint16) bool {
	for _, p := range l {
		if p.Matches(name, addr, port) {
			return true
		}
	}
	return false
}

// MayAllow reports whether some pattern of l could allow the target
// name:port once it is resolved: a name pattern that matches name, or an
// address pattern or "*" whose ports hold port. It lets a server refuse
// before resolving; Allows decides on the resolved address.
func (l UDPAllowList) MayAllow(name string, port uint16) bool {
	for _, p := range l {
		if port < p.lo || port > p.hi {
			continue
		}
		if p.kind == udpPrefix || p.kind == udpAny || p.Matches(name, netip.Addr{}, port) {
			return true
		}
	}
	return false
}

// ParseUDPAllowList parses patterns, reporting every bad one at once.
func ParseUDPAllowList(patterns []string) (UDPAllowList, error) {
	var (
		l    UDPAllowList
		errs []error
	)
	for i, s := range patterns {
		p, err := ParseUDPPattern(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("[%d]: %v", i, err))
			continue
		}
		l = append(l, p)
	}
	return l, errors.Join(errs...)
}

// AnyIdentity is the key of [UDPRulesConfig.Allow] that applies to every
// identity without an entry of its own.
const AnyIdentity = "*"

// UDPRulesConfig configures [NewUDPRules].
type UDPRulesConfig struct {
	// Allow maps an identity (a token's, "cert:CN" for a certificate's
	// alone, or AnyIdentity) to the patterns of the targets it may reach
	// over CONNECT-UDP. An identity without an entry, when there is no
	// AnyIdentity entry either, may reach every target that the
	// destination checks allow. An empty list allows nothing.
	Allow map[string][]string
	// Anonymous, if not empty, lets requests without credentials reach
	// these targets and nothing else. Empty refuses them (the default).
	Anonymous []string
}

// UDPRules decides which CONNECT-UDP targets each identity may reach. It
// is immutable and safe for concurrent use.
type UDPRules struct {
	byID      map[Identity]UDPAllowList
	anonymous UDPAllowList
}

// NewUDPRules parses cfg, reporting every problem at once with its key.
func NewUDPRules(cfg UDPRulesConfig) (*UDPRules, error) {
	r := &UDPRules{byID: make(map[Identity]UDPAllowList, len(cfg.Allow))}
	var errs []error
	ids := make([]string, 0, len(cfg.Allow))
	for id := range cfg.Allow {
		ids = append(ids, id)
	}
	slices.Sort(ids) // deterministic error order
	for _, id := range ids {
		if id != AnyIdentity && !validAuthIdentity(id) {
			errs = append(errs, fmt.Errorf("allow[%q]: not an identity (1-64 characters of A-Z a-z 0-9 . _ @ -, or cert: and a certificate's common name) or %q", id, AnyIdentity))
			continue
		}
		l, err := ParseUDPAllowList(cfg.Allow[id])
		if err != nil {
			errs = append(errs, fmt.Errorf("allow[%q]%v", id, err))
			continue
		}
		if l == nil {
			l = UDPAllowList{} // restricted to nothing, not unrestricted
		}
		r.byID[Identity(id)] = l
	}
	anon, err := ParseUDPAllowList(cfg.Anonymous)
	if err != nil {
		errs = append(errs, fmt.Errorf("anonymous%v", err))
	}
	r.anonymous = anon
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return r, nil
}

// For returns the allow-list of id and whether id is restricted to it; an
// unrestricted identity may reach whatever the destination checks allow.
// A nil UDPRules restricts nobody.
func (r *UDPRules) For(id Identity) (l UDPAllowList, restricted bool) {
	if r == nil {
		return nil, false
	}
	if l, ok := r.byID[id]; ok {
		return l, true
	}
	l, ok := r.byID[AnyIdentity]
	return l, ok
}

// Anonymous returns the allow-list for requests without credentials and
// whether such requests are accepted at all.
func (r *UDPRules) Anonymous() (UDPAllowList, bool) {
	if r == nil || len(r.anonymous) == 0 {
		return nil, false
	}
	return r.anonymous, true
}

// ValidHostName reports whether s is a DNS host name as CONNECT-UDP
// targets may use: at most 253 characters (no trailing dot), labels of 1-63
// letters, digits, hyphens and underscores that neither start nor end with
// a hyphen (RFC 1123 §2.1, with the underscore that service names use),
// and a last label that is not all digits (so that it cannot be mistaken
// for an IPv4 address, RFC 3696 §2).
func ValidHostName(s string) bool {
	if s == "" || len(s) > maxNameLen {
		return false
	}
	labelStart, digitsOnly := 0, true
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '.' {
			l := s[labelStart:i]
			if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
				return false
			}
			if i == len(s) && digitsOnly {
				return false
			}
			labelStart, digitsOnly = i+1, true
			continue
		}
		switch c := s[i]; {
		case '0' <= c && c <= '9':
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', c == '-', c == '_':
			digitsOnly = false
		default:
			return false
		}
	}
	return true
}
