package tunnel

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go/quicvarint"
)

func TestLastAddr(t *testing.T) {
	tests := []struct{ in, want string }{
		{"0.0.0.0/0", "255.255.255.255"},
		{"10.0.0.0/8", "10.255.255.255"},
		{"10.1.2.3/8", "10.255.255.255"}, // host bits are ignored
		{"100.64.0.0/10", "100.127.255.255"},
		{"198.18.0.0/15", "198.19.255.255"},
		{"198.18.0.4/30", "198.18.0.7"},
		{"198.18.0.4/31", "198.18.0.5"},
		{"198.18.0.4/32", "198.18.0.4"},
		{"::/0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
		{"2001:db8::/32", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"},
		{"2001:db8::/33", "2001:db8:7fff:ffff:ffff:ffff:ffff:ffff"},
		{"fd00:1::/64", "fd00:1::ffff:ffff:ffff:ffff"},
		{"2001:db8::/127", "2001:db8::1"},
		{"2001:db8::1/128", "2001:db8::1"},
		{"::ffff:198.18.0.0/112", "::ffff:198.18.255.255"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := lastAddr(netip.MustParsePrefix(tt.in)); got != netip.MustParseAddr(tt.want) {
				t.Errorf("lastAddr(%s) = %v, want %s", tt.in, got, tt.want)
			}
		})
	}
	if got := lastAddr(netip.Prefix{}); got.IsValid() {
		t.Errorf("lastAddr(invalid) = %v, want the invalid Addr", got)
	}
}

// TestLastAddrProperty checks on random prefixes that lastAddr is inside
// the prefix and its successor is not.
func TestLastAddrProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		var a netip.Addr
		if r.IntN(2) == 0 {
			a = netip.AddrFrom4([4]byte{byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())})
		} else {
			var b [16]byte
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			a = netip.AddrFrom16(b)
		}
		p := netip.PrefixFrom(a, r.IntN(a.BitLen()+1)).Masked()
		last := lastAddr(p)
		if !p.Contains(last) {
			t.Fatalf("lastAddr(%v) = %v, not in the prefix", p, last)
		}
		if n := last.Next(); n.IsValid() && p.Contains(n) {
			t.Fatalf("lastAddr(%v) = %v, but %v is in the prefix too", p, last, n)
		}
	}
}

func route(start, end string, proto uint8) connectip.IPRoute {
	return connectip.IPRoute{StartIP: netip.MustParseAddr(start), EndIP: netip.MustParseAddr(end), IPProtocol: proto}
}

// validateRoutes applies RFC 9484 §4.7.3's rules for a ROUTE_ADVERTISEMENT
// capsule, as connect-ip-go's AdvertiseRoute does: valid endpoints of one
// family, IPv4 before IPv6, protocols ascending, ranges of one protocol
// disjoint and ascending, and no specific-protocol range overlapping an
// all-protocols (0) range of the same family.
func validateRoutes(routes []connectip.IPRoute) error {
	for i, r := range routes {
		if !r.StartIP.IsValid() || !r.EndIP.IsValid() || r.StartIP.Is4() != r.EndIP.Is4() ||
			r.StartIP.Zone() != "" || r.EndIP.Zone() != "" || r.EndIP.Less(r.StartIP) {
			return fmt.Errorf("route %d (%v-%v) is not a valid range", i, r.StartIP, r.EndIP)
		}
		if i == 0 {
			continue
		}
		a := routes[i-1]
		switch {
		case a.StartIP.BitLen() > r.StartIP.BitLen():
			return fmt.Errorf("route %d: IPv6 before IPv4", i)
		case a.StartIP.BitLen() < r.StartIP.BitLen():
		case a.IPProtocol > r.IPProtocol:
			return fmt.Errorf("route %d: protocols not ascending", i)
		case a.IPProtocol == r.IPProtocol && a.EndIP.Compare(r.StartIP) >= 0:
			return fmt.Errorf("route %d: %v-%v does not start after %v-%v", i, r.StartIP, r.EndIP, a.StartIP, a.EndIP)
		}
	}
	for i, a := range routes {
		for _, b := range routes[i+1:] {
			if a.IPProtocol == 0 && b.IPProtocol != 0 && a.StartIP.Is4() == b.StartIP.Is4() &&
				a.StartIP.Compare(b.EndIP) <= 0 && b.StartIP.Compare(a.EndIP) <= 0 {
				return fmt.Errorf("protocol %d range %v-%v overlaps the all-protocols range %v-%v", b.IPProtocol, b.StartIP, b.EndIP, a.StartIP, a.EndIP)
			}
		}
	}
	return nil
}

func TestValidateRoutesRejects(t *testing.T) {
	// The validator the tests rely on must itself reject what the RFC
	// forbids.
	bad := [][]connectip.IPRoute{
		{route("2001:db8::", "2001:db8::ff", 0), route("198.18.0.0", "198.18.0.255", 0)},
		{route("198.18.0.0", "198.18.0.255", 6), route("198.18.1.0", "198.18.1.255", 0)},
		{route("198.18.0.0", "198.18.0.255", 0), route("198.18.0.255", "198.18.1.255", 0)},
		{route("198.18.1.0", "198.18.1.255", 0), route("198.18.0.0", "198.18.0.255", 0)},
		{route("198.18.0.0", "198.18.0.255", 0), route("198.18.0.7", "198.18.0.7", 6)},
		{route("198.18.0.9", "198.18.0.1", 0)},
	}
	for i, rs := range bad {
		if err := validateRoutes(rs); err == nil {
			t.Errorf("validateRoutes(bad[%d]) = nil", i)
		}
	}
}

func TestSortMergeRoutes(t *testing.T) {
	tests := []struct {
		name string
		in   []connectip.IPRoute
		want []connectip.IPRoute
	}{
		{"empty", nil, nil},
		{"one", []connectip.IPRoute{route("198.18.0.0", "198.18.0.255", 0)}, []connectip.IPRoute{route("198.18.0.0", "198.18.0.255", 0)}},
		{
			"IPv4 first, ascending",
			[]connectip.IPRoute{
				route("2001:db8::", "2001:db8::ff", 0),
				route("198.18.2.0", "198.18.2.255", 0),
				route("::", "::ff", 0),
				route("198.18.0.0", "198.18.0.255", 0),
			},
			[]connectip.IPRoute{
				route("198.18.0.0", "198.18.0.255", 0),
				route("198.18.2.0", "198.18.2.255", 0),
				route("::", "::ff", 0),
				route("2001:db8::", "2001:db8::ff", 0),
			},
		},
		{
			"adjacent merge",
			[]connectip.IPRoute{route("198.18.1.0", "198.18.1.255", 0), route("198.18.0.0", "198.18.0.255", 0)},
			[]connectip.IPRoute{route("198.18.0.0", "198.18.1.255", 0)},
		},
		{
			"overlap merge",
			[]connectip.IPRoute{route("198.18.0.0", "198.18.1.10", 0), route("198.18.1.0", "198.18.2.255", 0)},
			[]connectip.IPRoute{route("198.18.0.0", "198.18.2.255", 0)},
		},
		{
			"contained",
			[]connectip.IPRoute{route("198.18.0.0", "198.19.255.255", 0), route("198.18.5.0", "198.18.5.255", 0)},
			[]connectip.IPRoute{route("198.18.0.0", "198.19.255.255", 0)},
		},
		{
			"duplicates",
			[]connectip.IPRoute{route("2001:db8::", "2001:db8::ff", 0), route("2001:db8::", "2001:db8::ff", 0)},
			[]connectip.IPRoute{route("2001:db8::", "2001:db8::ff", 0)},
		},
		{
			"gap of one address is kept",
			[]connectip.IPRoute{route("198.18.0.0", "198.18.0.9", 0), route("198.18.0.11", "198.18.0.20", 0)},
			[]connectip.IPRoute{route("198.18.0.0", "198.18.0.9", 0), route("198.18.0.11", "198.18.0.20", 0)},
		},
		{
			"chain of merges",
			[]connectip.IPRoute{
				route("198.18.0.0", "198.18.0.9", 0),
				route("198.18.0.10", "198.18.0.19", 0),
				route("198.18.0.5", "198.18.0.30", 0),
				route("198.18.0.31", "198.18.0.31", 0),
			},
			[]connectip.IPRoute{route("198.18.0.0", "198.18.0.31", 0)},
		},
		{
			"top of the IPv4 space",
			[]connectip.IPRoute{route("255.255.255.0", "255.255.255.255", 0), route("255.255.255.255", "255.255.255.255", 0), route("0.0.0.0", "0.0.0.255", 0)},
			[]connectip.IPRoute{route("0.0.0.0", "0.0.0.255", 0), route("255.255.255.0", "255.255.255.255", 0)},
		},
		{
			"top of IPv4 and bottom of IPv6 do not merge",
			[]connectip.IPRoute{route("::", "::ff", 0), route("255.255.255.0", "255.255.255.255", 0)},
			[]connectip.IPRoute{route("255.255.255.0", "255.255.255.255", 0), route("::", "::ff", 0)},
		},
		{
			"whole spaces",
			[]connectip.IPRoute{route("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0), route("0.0.0.0", "255.255.255.255", 0), route("2001:db8::", "2001:db8::1", 0)},
			[]connectip.IPRoute{route("0.0.0.0", "255.255.255.255", 0), route("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0)},
		},
		{
			"protocols sorted and not merged across",
			[]connectip.IPRoute{
				route("198.18.1.0", "198.18.1.255", 17),
				route("198.18.0.0", "198.18.0.255", 6),
				route("198.18.0.0", "198.18.0.255", 17),
			},
			[]connectip.IPRoute{
				route("198.18.0.0", "198.18.0.255", 6),
				route("198.18.0.0", "198.18.1.255", 17),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := slices.Clone(tt.in)
			got := sortMergeRoutes(tt.in)
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("sortMergeRoutes mismatch (-want +got):\n%s", diff)
			}
			if !slices.Equal(in, tt.in) {
				t.Errorf("sortMergeRoutes modified its input: %v", tt.in)
			}
			if err := validateRoutes(got); err != nil {
				t.Errorf("sortMergeRoutes result is not a valid advertisement: %v", err)
			}
		})
	}
}

// TestSortMergeRoutesProperty merges random ranges of one protocol per
// family (what the server advertises) and checks that the result is a
// valid advertisement covering exactly the same addresses.
func TestSortMergeRoutesProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	// Small address spaces make overlaps and adjacency common.
	addr4 := func() netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(r.IntN(64))}) }
	addr6 := func() netip.Addr { return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(r.IntN(64))}) }
	for range 500 {
		proto := uint8(r.IntN(2) * 6)
		var in []connectip.IPRoute
		for range r.IntN(8) {
			a, b := addr4(), addr4()
			if r.IntN(2) == 0 {
				a, b = addr6(), addr6()
			}
			if b.Less(a) {
				a, b = b, a
			}
			in = append(in, connectip.IPRoute{StartIP: a, EndIP: b, IPProtocol: proto})
		}
		got := sortMergeRoutes(in)
		if err := validateRoutes(got); err != nil {
			t.Fatalf("sortMergeRoutes(%v) = %v: %v", in, got, err)
		}
		covered := func(rs []connectip.IPRoute, a netip.Addr) bool {
			return slices.ContainsFunc(rs, func(r connectip.IPRoute) bool {
				return r.StartIP.Is4() == a.Is4() && r.StartIP.Compare(a) <= 0 && a.Compare(r.EndIP) <= 0
			})
		}
		for i := range 64 {
			for _, a := range []netip.Addr{
				netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}),
				netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i)}),
			} {
				if covered(in, a) != covered(got, a) {
					t.Fatalf("sortMergeRoutes(%v) = %v: coverage of %v changed", in, got, a)
				}
			}
		}
		// Adjacent ranges must have been merged.
		for i := 1; i < len(got); i++ {
			if got[i-1].StartIP.Is4() == got[i].StartIP.Is4() && got[i-1].EndIP.Next() == got[i].StartIP {
				t.Fatalf("sortMergeRoutes(%v) = %v: adjacent ranges not merged", in, got)
			}
		}
	}
}

func TestPrefixesToRoutes(t *testing.T) {
	in := []netip.Prefix{
		netip.MustParsePrefix("2001:db8::/32"),
		netip.MustParsePrefix("198.18.0.0/16"),
		netip.MustParsePrefix("198.19.0.0/16"),
		netip.MustParsePrefix("198.18.5.0/24"),
	}
	got := prefixesToRoutes(in)
	want := []connectip.IPRoute{
		route("198.18.0.0", "198.19.255.255", 0),
		route("2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", 0),
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("prefixesToRoutes mismatch (-want +got):\n%s", diff)
	}
	if err := validateRoutes(got); err != nil {
		t.Error(err)
	}
	if diff := cmp.Diff([]netip.Prefix{netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("2001:db8::/32")}, routesToPrefixes(got),
		cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("routesToPrefixes mismatch (-want +got):\n%s", diff)
	}
}

func TestRoutesToPrefixes(t *testing.T) {
	tests := []struct {
		name string
		in   []connectip.IPRoute
		want []string
	}{
		{"none", nil, nil},
		{"everything", []connectip.IPRoute{route("0.0.0.0", "255.255.255.255", 0), route("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0)}, []string{"0.0.0.0/0", "::/0"}},
		{"unaligned range", []connectip.IPRoute{route("198.18.0.1", "198.18.0.6", 0)}, []string{"198.18.0.1/32", "198.18.0.2/31", "198.18.0.4/31", "198.18.0.6/32"}},
		{"single address", []connectip.IPRoute{route("2001:db8::1", "2001:db8::1", 0)}, []string{"2001:db8::1/128"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, p := range routesToPrefixes(tt.in) {
				got = append(got, p.String())
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("routesToPrefixes(%v) mismatch (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

// TestScopedRoutes checks that a scoped request gets routes inside its
// scope (RFC 9484 §4.6), merged into a valid advertisement.
func TestScopedRoutes(t *testing.T) {
	srv := &Server{routes: prefixesToRoutes([]netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/0"),
		netip.MustParsePrefix("::/0"),
	})}
	tests := []struct {
		name  string
		scope ipScope
		want  []connectip.IPRoute
	}{
		{"v4 prefix", ipScope{target: netip.MustParsePrefix("198.18.0.0/15")}, []connectip.IPRoute{route("198.18.0.0", "198.19.255.255", 0)}},
		{"v6 prefix and proto", ipScope{target: netip.MustParsePrefix("2001:db8::/32"), proto: protoUDP}, []connectip.IPRoute{route("2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", protoUDP)}},
		{"proto only", ipScope{proto: protoTCP}, []connectip.IPRoute{route("0.0.0.0", "255.255.255.255", protoTCP), route("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", protoTCP)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ss := &session{srv: srv, scope: tt.scope}
			got := ss.scopedRoutes()
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("scopedRoutes mismatch (-want +got):\n%s", diff)
			}
			if err := validateRoutes(got); err != nil {
				t.Error(err)
			}
		})
	}
	// A scope outside every route gets none.
	narrow := &Server{routes: prefixesToRoutes([]netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")})}
	if got := (&session{srv: narrow, scope: ipScope{target: netip.MustParsePrefix("2001:db8::/32")}}).scopedRoutes(); len(got) != 0 {
		t.Errorf("scopedRoutes outside every route = %v, want none", got)
	}
}

// FuzzAdvertisedRoutes builds the routes a session is sent as the server
// does (prefixesToRoutes for the configured routes, scopedRoutes for the
// request's scope) from any prefixes and scope: the advertisement parses
// (RFC 9484 §4.7.3 order, no overlap), lies within the scope, and covers
// exactly the configured addresses inside the scope. Then the client takes
// it under a policy built from policyBytes (--route limits, excludes, the
// host's networks, the server's address): at most MaxRoutes prefixes, none
// from a protocol-scoped range, and an address is routed into the tunnel
// (by a route and no throw route) only if it is advertised for all
// protocols, inside the limits and outside every throw; unless the cap
// refused a range, every such address is routed.
func FuzzAdvertisedRoutes(f *testing.F) {
	f.Add([]byte{4, 0, 0, 0, 0, 0}, []byte{4, 198, 18, 0, 0, 15}, byte(0), []byte{})
	f.Add([]byte{4, 10, 0, 0, 0, 8, 4, 10, 1, 0, 0, 16, 6, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32}, []byte{}, byte(6), []byte{})
	f.Add([]byte{4, 198, 18, 0, 0, 31, 4, 198, 18, 0, 2, 31}, []byte{4, 198, 18, 0, 1, 32}, byte(17), []byte{})
	// Full tunnel, --route 10.99.0.0/16, --exclude 10.99.200.0/24, a LAN
	// 198.18.77.0/24.
	f.Add([]byte{4, 0, 0, 0, 0, 0}, []byte{}, byte(0), []byte{0, 4, 10, 99, 0, 0, 16, 1, 4, 10, 99, 200, 0, 24, 2, 4, 198, 18, 77, 0, 24})
	f.Fuzz(func(t *testing.T, prefixBytes, scopeBytes []byte, proto byte, policyBytes []byte) {
		take := func(b []byte) (netip.Prefix, []byte, bool) {
			if len(b) < 1 {
				return netip.Prefix{}, nil, false
			}
			n := 4
			if b[0]%2 == 0 {
				n = 16
			}
			if len(b) < 2+n {
				return netip.Prefix{}, nil, false
			}
			a, _ := netip.AddrFromSlice(b[1 : 1+n])
			return netip.PrefixFrom(a, int(b[1+n])%(a.BitLen()+1)).Masked(), b[2+n:], true
		}
		var prefixes []netip.Prefix
		for len(prefixes) < 16 {
			p, rest, ok := take(prefixBytes)
			if !ok {
				break
			}
			prefixes = append(prefixes, p)
			prefixBytes = rest
		}
		scope := ipScope{proto: proto}
		if p, _, ok := take(scopeBytes); ok {
			scope.target = p
		}
		ss := &session{srv: &Server{routes: prefixesToRoutes(prefixes)}, scope: scope}
		routes := ss.srv.routes
		if !scope.full() {
			routes = ss.scopedRoutes()
		}
		b := appendRouteAdvertisement(nil, routes)
		_, n, _ := quicvarint.Parse(b)
		_, m, _ := quicvarint.Parse(b[n:])
		if got, err := parseRouteAdvertisement(b[n+m:]); err != nil || len(got) != len(routes) {
			t.Fatalf("advertisement of %v does not parse: %v", routes, err)
		}
		for _, r := range routes {
			if r.IPProtocol != scope.proto {
				t.Fatalf("route %v has protocol %d, scope %d", r, r.IPProtocol, scope.proto)
			}
			if scope.target.IsValid() && (!scope.target.Contains(r.StartIP) || !scope.target.Contains(r.EndIP)) {
				t.Fatalf("route %v leaves the scope %v", r, scope.target)
			}
		}
		covered := func(a netip.Addr) bool {
			for _, r := range routes {
				if r.StartIP.Compare(a) <= 0 && a.Compare(r.EndIP) <= 0 {
					return true
				}
			}
			return false
		}
		configured := func(a netip.Addr) bool {
			if scope.target.IsValid() && !scope.target.Contains(a) {
				return false
			}
			for _, p := range prefixes {
				if p.Contains(a) {
					return true
				}
			}
			return false
		}
		// The edges of every prefix and of the scope, and their
		// neighbours, are where a wrong merge or cut would show.
		edges := append(slices.Clone(prefixes), scope.target)
		for _, p := range edges {
			if !p.IsValid() {
				continue
			}
			for _, a := range []netip.Addr{p.Addr(), p.Addr().Prev(), lastAddr(p), lastAddr(p).Next()} {
				if a.IsValid() && covered(a) != configured(a) {
					t.Fatalf("%v: advertised %v, configured %v (routes %v, prefixes %v, scope %+v)", a, covered(a), configured(a), routes, prefixes, scope)
				}
			}
		}

		// The client's side.
		var pol ClientPolicy
		for len(policyBytes) > 1 && len(pol.Routes)+len(pol.Excludes)+len(pol.Local) < 16 {
			kind := policyBytes[0]
			p, rest, ok := take(policyBytes[1:])
			if !ok {
				break
			}
			policyBytes = rest
			switch kind % 3 {
			case 0:
				pol.Routes = append(pol.Routes, p)
			case 1:
				pol.Excludes = append(pol.Excludes, p)
			case 2:
				pol.Local = append(pol.Local, p)
			}
		}
		server := netip.MustParseAddr("198.18.1.2")
		throws := pol.throws(server)
		got, rep := pol.clientRoutes(routes, throws)
		if len(got) > MaxRoutes {
			t.Fatalf("clientRoutes: %d routes, more than %d", len(got), MaxRoutes)
		}
		in := func(ps []netip.Prefix, a netip.Addr) bool {
			return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(a) })
		}
		allowed := func(a netip.Addr) bool {
			return scope.proto == 0 && covered(a) && (len(pol.Routes) == 0 || in(pol.Routes, a)) && !in(throws, a)
		}
		for _, q := range got {
			if !q.IsValid() || q != q.Masked() {
				t.Fatalf("clientRoutes: %v is not a masked prefix", q)
			}
			edges = append(edges, q)
		}
		edges = append(append(append(edges, pol.Routes...), pol.Excludes...), pol.Local...)
		edges = append(edges, netip.PrefixFrom(server, 32))
		for _, p := range edges {
			if !p.IsValid() {
				continue
			}
			for _, a := range []netip.Addr{p.Addr(), p.Addr().Prev(), lastAddr(p), lastAddr(p).Next()} {
				if !a.IsValid() {
					continue
				}
				routed := in(got, a) && !in(throws, a)
				if routed && !allowed(a) {
					t.Fatalf("%v routed into the tunnel outside the policy (routes %v, policy %+v, client routes %v)", a, routes, pol, got)
				}
				if !routed && allowed(a) && rep.overCap == 0 {
					t.Fatalf("%v not routed though advertised and inside the policy (routes %v, policy %+v, client routes %v)", a, routes, pol, got)
				}
			}
		}
	})
}
