package tunnel

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	connectip "github.com/quic-go/connect-ip-go"
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

var cmpNetip = cmp.Options{
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
}

// The client's LAN in these tests, and the server's address on it.
var (
	testLocal = prefixes("198.18.77.0/24", "2001:db8:77::/64")
	lanServer = netip.MustParseAddr("198.18.1.2")
)

func TestCheckAssignment(t *testing.T) {
	many4 := func(n int) []string {
		var s []string
		for i := range n {
			s = append(s, fmt.Sprintf("100.64.0.%d/32", i+2))
		}
		return s
	}
	tests := []struct {
		name       string
		lease      []string
		allowLocal bool
		want       []string
		wantErr    string // "" for none
	}{
		{"host addresses", []string{"100.64.0.2/32", "fd6d:6173:7175:6500::2/128"}, false, []string{"100.64.0.2/32", "fd6d:6173:7175:6500::2/128"}, ""},
		{"prefix becomes its host address", []string{"100.64.0.2/24", "fd6d:6173:7175:6500::2/64"}, false, []string{"100.64.0.2/32", "fd6d:6173:7175:6500::2/128"}, ""},
		{"duplicates folded", []string{"100.64.0.2/32", "100.64.0.2/24"}, false, []string{"100.64.0.2/32"}, ""},
		{"half of IPv4", []string{"128.0.0.0/1"}, false, nil, "128.0.0.0/1 (the server's address)"},
		{"the LAN", []string{"198.18.77.0/25"}, false, nil, "the host's own or connected network"},
		{"the LAN, allowed", []string{"198.18.77.9/32"}, true, []string{"198.18.77.9/32"}, ""},
		{"the LAN and multicast", []string{"198.18.77.9/32", "224.0.0.1/32"}, false, nil, "198.18.77.9/32 (the host's own or connected network), 224.0.0.1/32 (multicast)"},
		{"the LAN v6", []string{"2001:db8:77::9/128"}, false, nil, "the host's own or connected network"},
		{"the server's address", []string{"198.18.1.2/32"}, false, nil, "the server's address"},
		{"a prefix holding the server", []string{"198.18.0.0/16"}, true, nil, "the server's address"},
		{"loopback", []string{"127.0.0.2/32"}, false, nil, "loopback"},
		{"loopback v6", []string{"::1/128"}, false, nil, "loopback"},
		{"multicast", []string{"224.0.0.0/4"}, false, nil, "multicast"},
		{"multicast v6", []string{"ff02::1/128"}, false, nil, "multicast"},
		{"broadcast", []string{"255.255.255.255/32"}, false, nil, "broadcast"},
		{"unspecified", []string{"0.0.0.0/0"}, false, nil, "unspecified"},
		{"link-local", []string{"169.254.1.1/32"}, false, nil, "link-local"},
		{"link-local v6", []string{"fe80::/64"}, false, nil, "link-local"},
		{"this network", []string{"0.1.2.3/32"}, false, nil, "reserved"},
		{"reserved", []string{"240.0.0.1/32"}, false, nil, "reserved"},
		{"one bad refuses all", []string{"100.64.0.2/32", "fe80::1/128"}, false, nil, "fe80::1/128 (link-local)"},
		{"at the cap", many4(MaxAssignedAddresses), false, many4(MaxAssignedAddresses), ""},
		{"over the cap", many4(MaxAssignedAddresses + 1), false, nil, "17 IPv4 and 0 IPv6 addresses, more than 16 of one family"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &ClientPolicy{Local: testLocal, AllowLocalOverlap: tt.allowLocal}
			got, err := p.checkAssignment(prefixes(tt.lease...), lanServer)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrAssignmentRefused) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("checkAssignment(%v) = %v, %v, want an ErrAssignmentRefused with %q", tt.lease, got, err, tt.wantErr)
				}
				ae, ok := errors.AsType[*AssignmentError](err)
				if wantLocal := strings.Contains(tt.wantErr, "connected network"); !ok || ae.Local != wantLocal {
					t.Errorf("checkAssignment(%v) = %#v, want an AssignmentError with Local %v", tt.lease, err, wantLocal)
				}
				return
			}
			if err != nil {
				t.Fatalf("checkAssignment(%v) = %v", tt.lease, err)
			}
			if diff := cmp.Diff(prefixes(tt.want...), got, cmpNetip); diff != "" {
				t.Errorf("checkAssignment(%v) mismatch (-want +got):\n%s", tt.lease, diff)
			}
		})
	}
}

func TestClientRoutes(t *testing.T) {
	all := []connectip.IPRoute{route("0.0.0.0", "255.255.255.255", 0), route("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0)}
	// many is a flood of single-address ranges, one more than MaxRoutes;
	// after the cap, the range after it is refused too.
	var many []connectip.IPRoute
	for i := range MaxRoutes + 1 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1})
		many = append(many, connectip.IPRoute{StartIP: a, EndIP: a})
	}
	tests := []struct {
		name   string
		pol    ClientPolicy
		adv    []connectip.IPRoute
		want   []string
		report routeReport
	}{
		{"full tunnel", ClientPolicy{}, all, []string{"0.0.0.0/0", "::/0"}, routeReport{}},
		{"--route limits", ClientPolicy{Routes: prefixes("10.99.0.0/16")}, all, []string{"10.99.0.0/16"}, routeReport{outside: 1}},
		{"--route wider than the advertisement", ClientPolicy{Routes: prefixes("10.0.0.0/8")},
			[]connectip.IPRoute{route("10.1.0.0", "10.1.255.255", 0), route("198.18.0.0", "198.18.0.255", 0)},
			[]string{"10.1.0.0/16"}, routeReport{outside: 1}},
		{"nested limits", ClientPolicy{Routes: prefixes("10.0.0.0/8", "10.1.0.0/16")}, all[:1], []string{"10.0.0.0/8", "10.1.0.0/16"}, routeReport{}},
		{"excluded wholly", ClientPolicy{Excludes: prefixes("200.0.0.0/8")},
			[]connectip.IPRoute{route("200.1.0.0", "200.1.255.255", 0)}, nil, routeReport{outside: 1}},
		{"the LAN wholly", ClientPolicy{Local: testLocal},
			[]connectip.IPRoute{route("198.18.77.0", "198.18.77.127", 0)}, nil, routeReport{outside: 1}},
		{"excludes cut by throw routes", ClientPolicy{Excludes: prefixes("200.0.0.0/8")}, all[:1], []string{"0.0.0.0/0"}, routeReport{}},
		{"protocol-scoped refused", ClientPolicy{},
			[]connectip.IPRoute{route("198.18.0.0", "198.18.0.255", 0), route("0.0.0.0", "255.255.255.255", protoUDP)},
			[]string{"198.18.0.0/24"}, routeReport{protocol: 1}},
		{"flood capped", ClientPolicy{}, append(slices.Clone(many), route("2001:db8::", "2001:db8::", 0)), nil, routeReport{overCap: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, rep := tt.pol.clientRoutes(tt.adv, tt.pol.throws(lanServer))
			if tt.name == "flood capped" {
				if len(got) != MaxRoutes || rep != tt.report {
					t.Errorf("clientRoutes(flood of %d) = %d routes, %+v, want %d, %+v", len(tt.adv), len(got), rep, MaxRoutes, tt.report)
				}
				return
			}
			if diff := cmp.Diff(prefixes(tt.want...), got, cmpNetip); diff != "" {
				t.Errorf("clientRoutes(%v) mismatch (-want +got):\n%s", tt.adv, diff)
			}
			if rep != tt.report {
				t.Errorf("clientRoutes(%v) report = %+v, want %+v", tt.adv, rep, tt.report)
			}
		})
	}
	// A range too big for what is left of the cap is refused as a whole,
	// and so is what follows, though it would fit.
	edge := append(slices.Clone(many[:MaxRoutes-1]), route("11.0.0.1", "11.0.0.6", 0), route("11.0.0.9", "11.0.0.9", 0))
	got, rep := (&ClientPolicy{}).clientRoutes(edge, nil)
	if len(got) != MaxRoutes-1 || rep.overCap != 2 {
		t.Errorf("clientRoutes with a 4-prefix range and room for 1 = %d routes, %+v, want %d and the last two ranges refused", len(got), rep, MaxRoutes-1)
	}
}

func TestThrows(t *testing.T) {
	p := &ClientPolicy{Excludes: prefixes("200.0.0.0/8"), Local: testLocal}
	want := prefixes("200.0.0.0/8", "198.18.77.0/24", "2001:db8:77::/64", "198.18.1.2/32")
	if diff := cmp.Diff(want, p.throws(lanServer), cmpNetip); diff != "" {
		t.Errorf("throws mismatch (-want +got):\n%s", diff)
	}
	if got := p.throws(netip.MustParseAddr("::ffff:198.18.1.2")); !slices.Contains(got, netip.MustParsePrefix("198.18.1.2/32")) {
		t.Errorf("throws(mapped server) = %v, want the server as 198.18.1.2/32", got)
	}
}

func TestAcceptDNS(t *testing.T) {
	routes := prefixes("0.0.0.0/0", "2001:db8:2::/48")
	throws := (&ClientPolicy{Excludes: prefixes("200.0.0.0/8"), Local: testLocal}).throws(lanServer)
	var nine []string
	for i := range MaxDNSServers + 1 {
		nine = append(nine, fmt.Sprintf("198.18.2.%d", 50+i))
	}
	tests := []struct {
		name    string
		in      []string
		want    []string
		refused string // a substring of the refusals, "" for none
	}{
		{"routed", []string{"198.18.2.53", "2001:db8:2::53"}, []string{"198.18.2.53", "2001:db8:2::53"}, ""},
		{"duplicates folded", []string{"198.18.2.53", "198.18.2.53"}, []string{"198.18.2.53"}, ""},
		{"loopback", []string{"127.0.0.53", "198.18.2.53"}, []string{"198.18.2.53"}, "127.0.0.53 (loopback)"},
		{"unspecified", []string{"0.0.0.0", "::"}, nil, "0.0.0.0 (unspecified), :: (unspecified)"},
		{"multicast", []string{"224.0.0.251", "ff02::fb"}, nil, "multicast"},
		{"link-local", []string{"fe80::1", "169.254.0.1"}, nil, "link-local"},
		{"the LAN", []string{"198.18.77.1"}, nil, "198.18.77.1 (excluded)"},
		{"the server", []string{"198.18.1.2"}, nil, "excluded"},
		{"excluded", []string{"200.1.1.1"}, nil, "excluded"},
		{"not routed", []string{"2001:db8:3::53"}, nil, "2001:db8:3::53 (not routed through the tunnel)"},
		{"capped", nine, nine[:MaxDNSServers], nine[MaxDNSServers] + " (over the cap)"},
		{"looked at up to 32", append(slices.Repeat([]string{"127.0.0.53"}, 4*MaxDNSServers), "198.18.2.53"), nil, "198.18.2.53 (over the cap)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, bad := acceptDNS(addrs(tt.in...), routes, throws)
			if diff := cmp.Diff(addrs(tt.want...), got, cmpNetip); diff != "" {
				t.Errorf("acceptDNS(%v) mismatch (-want +got):\n%s", tt.in, diff)
			}
			if s := bad.String(); (tt.refused == "") != (s == "") || !strings.Contains(s, tt.refused) {
				t.Errorf("acceptDNS(%v) refused %q, want %q", tt.in, s, tt.refused)
			}
		})
	}
	// Split tunnel: only what --route sends through the tunnel.
	split := (&ClientPolicy{Routes: prefixes("10.99.0.0/16")})
	r, _ := split.clientRoutes([]connectip.IPRoute{route("0.0.0.0", "255.255.255.255", 0)}, nil)
	if got, _ := acceptDNS(addrs("198.18.2.53", "10.99.0.53"), r, nil); !slices.Equal(got, addrs("10.99.0.53")) {
		t.Errorf("acceptDNS with --route 10.99.0.0/16 = %v, want 10.99.0.53 alone", got)
	}
}

// TestOwnAddrExact: a destination elsewhere in an assigned prefix is not
// the client's; only the address itself is.
func TestOwnAddrExact(t *testing.T) {
	c := &Client{addresses: hostPrefixes(prefixes("198.18.64.9/24", "2001:db8:64::9/64"))}
	for _, tt := range []struct {
		a    string
		want bool
	}{
		{"198.18.64.9", true}, {"2001:db8:64::9", true},
		{"198.18.64.10", false}, {"198.18.64.0", false}, {"2001:db8:64::a", false}, {"::ffff:198.18.64.9", false},
	} {
		if got := c.ownAddr(netip.MustParseAddr(tt.a)); got != tt.want {
			t.Errorf("ownAddr(%s) = %v, want %v", tt.a, got, tt.want)
		}
	}
}

// BenchmarkClientRoutesFlood measures one 64 KiB ROUTE_ADVERTISEMENT of
// unaligned IPv6 ranges (each expands to 254 prefixes), the worst a
// server can send in one capsule.
func BenchmarkClientRoutesFlood(b *testing.B) {
	var adv []connectip.IPRoute
	for i := range 65536 / 34 {
		var lo, hi [16]byte
		copy(lo[:], []byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 8), byte(i)})
		copy(hi[:], lo[:6])
		for j := 6; j < 16; j++ {
			hi[j] = 0xff
		}
		lo[15], hi[15] = 1, 0xfe
		start, end := netip.AddrFrom16(lo), netip.AddrFrom16(hi)
		adv = append(adv, connectip.IPRoute{StartIP: start, EndIP: end})
	}
	p := &ClientPolicy{Local: testLocal}
	throws := p.throws(lanServer)
	b.ReportAllocs()
	for b.Loop() {
		if got, _ := p.clientRoutes(adv, throws); len(got) > MaxRoutes {
			b.Fatal(len(got))
		}
	}
}
