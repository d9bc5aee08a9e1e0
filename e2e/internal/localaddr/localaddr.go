// Package localaddr parses the -local flag of the e2e load tools: the
// local addresses to dial from, since masqued caps connections per source
// address.
package localaddr

import (
	"fmt"
	"net/netip"
	"strings"
)

// Max bounds how many addresses Parse returns.
const Max = 4096

// Parse parses "a,b,first-last" into addresses, at most Max; empty means
// one unspecified IPv4 address.
func Parse(s string) ([]netip.Addr, error) {
	if s == "" {
		return []netip.Addr{netip.IPv4Unspecified()}, nil
	}
	var out []netip.Addr
	for _, item := range strings.Split(s, ",") {
		first, last, isRange := strings.Cut(item, "-")
		a, err := netip.ParseAddr(first)
		if err != nil {
			return nil, fmt.Errorf("-local: %w", err)
		}
		if !isRange {
			out = append(out, a)
			continue
		}
		b, err := netip.ParseAddr(last)
		if err != nil {
			return nil, fmt.Errorf("-local: %w", err)
		}
		if a.Is4() != b.Is4() || b.Less(a) {
			return nil, fmt.Errorf("-local: bad range %s", item)
		}
		for ; a.Compare(b) <= 0 && len(out) < Max; a = a.Next() {
			out = append(out, a)
		}
	}
	return out, nil
}
