package tunnel

import (
	"net/netip"
	"slices"

	connectip "github.com/quic-go/connect-ip-go"
)

// lastAddr returns the highest address in p.
func lastAddr(p netip.Prefix) netip.Addr {
	p = p.Masked()
	b := p.Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		hostBits := max(0, min(8, (i+1)*8-bits))
		b[i] |= byte(1<<hostBits - 1)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// sortMergeRoutes sorts routes the way RFC 9484 §4.7.3 requires (IPv4
// before IPv6, ascending, by protocol) and merges overlapping or adjacent
// ranges of the same protocol, so that the advertisement is valid.
func sortMergeRoutes(routes []connectip.IPRoute) []connectip.IPRoute {
	routes = slices.Clone(routes)
	slices.SortFunc(routes, func(a, b connectip.IPRoute) int {
		if a.StartIP.Is4() != b.StartIP.Is4() {
			if a.StartIP.Is4() {
				return -1
			}
			return 1
		}
		if c := int(a.IPProtocol) - int(b.IPProtocol); c != 0 {
			return c
		}
		return a.StartIP.Compare(b.StartIP)
	})
	out := routes[:0]
	for _, r := range routes {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if last.IPProtocol == r.IPProtocol && last.StartIP.Is4() == r.StartIP.Is4() {
				next := last.EndIP.Next()
				if r.StartIP.Compare(last.EndIP) <= 0 || (next.IsValid() && next == r.StartIP) {
					if r.EndIP.Compare(last.EndIP) > 0 {
						last.EndIP = r.EndIP
					}
					continue
				}
			}
		}
		out = append(out, r)
	}
	return out
}

// routesToPrefixes converts advertised ranges to the prefixes that cover
// them exactly.
func routesToPrefixes(routes []connectip.IPRoute) []netip.Prefix {
	var ps []netip.Prefix
	for _, r := range routes {
		ps = append(ps, r.Prefixes()...)
	}
	return ps
}
