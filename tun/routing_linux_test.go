package tun

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/masque-vpn/masque/tun/internal/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var (
	v4Default = netip.MustParsePrefix("0.0.0.0/0")
	v6Default = netip.MustParsePrefix("::/0")
)

func TestRoutingApplyRemove(t *testing.T) {
	tests := []struct {
		name       string
		r          Routing
		wantRules  []string
		wantRoutes []string
	}{
		{
			name: "full tunnel with defaults",
			r: Routing{
				Routes:   []netip.Prefix{v4Default, v6Default},
				Excludes: []netip.Prefix{netip.MustParsePrefix("198.18.5.0/24"), netip.MustParsePrefix("2001:db8:5::/48")},
			},
			wantRules: []string{
				"v4 pref 5200 lookup 254 suppress_prefixlength 0",
				"v4 pref 5201 not fwmark 0x4d51 lookup 19793",
				"v6 pref 5200 lookup 254 suppress_prefixlength 0",
				"v6 pref 5201 not fwmark 0x4d51 lookup 19793",
			},
			wantRoutes: []string{
				"table 19793 throw 198.18.5.0/24",
				"table 19793 throw 2001:db8:5::/48",
				"table 19793 unicast 0.0.0.0/0 dev mqtest0",
				"table 19793 unicast ::/0 dev mqtest0",
			},
		},
		{
			name: "split ipv4 with custom ids",
			r: Routing{
				Table:        100,
				FwMark:       0x1234,
				RulePriority: 1000,
				Routes:       []netip.Prefix{netip.MustParsePrefix("198.18.64.7/18")}, // host bits are dropped
				Excludes:     []netip.Prefix{netip.MustParsePrefix("198.18.64.1/32"), netip.MustParsePrefix("2001:db8::/32")},
			},
			wantRules: []string{
				"v4 pref 1000 lookup 254 suppress_prefixlength 0",
				"v4 pref 1001 not fwmark 0x1234 lookup 100",
			},
			wantRoutes: []string{
				"table 100 throw 198.18.64.1/32",
				"table 100 unicast 198.18.64.0/18 dev mqtest0",
			},
		},
		{
			name:      "no routes",
			r:         Routing{Excludes: []netip.Prefix{netip.MustParsePrefix("198.18.64.1/32")}},
			wantRules: nil, wantRoutes: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nstest.New(t)
			d := createTestTUN(t)
			r := tt.r
			if len(r.Routes) > 0 {
				r.Link = d.Name()
			}
			for i := range 2 { // Apply again changes nothing.
				if err := r.Apply(); err != nil {
					t.Fatalf("Apply() #%d = %v", i+1, err)
				}
				rules, routes := routingState(t, &r)
				if diff := cmp.Diff(tt.wantRules, rules); diff != "" {
					t.Errorf("rules after Apply #%d (-want +got):\n%s", i+1, diff)
				}
				if diff := cmp.Diff(tt.wantRoutes, routes); diff != "" {
					t.Errorf("routes after Apply #%d (-want +got):\n%s", i+1, diff)
				}
			}
			for i := range 2 { // Remove again is no error.
				if err := r.Remove(); err != nil {
					t.Fatalf("Remove() #%d = %v", i+1, err)
				}
				rules, routes := routingState(t, &r)
				if len(rules) != 0 || len(routes) != 0 {
					t.Errorf("after Remove #%d: rules %q, routes %q, want none", i+1, rules, routes)
				}
			}
		})
	}
}

// TestRoutingLookup checks that the kernel routes as intended once Apply
// has run: into the TUN except for marked packets, excluded prefixes and
// the local network of the uplink.
func TestRoutingLookup(t *testing.T) {
	nstest.New(t)
	d := createTestTUN(t)
	uplink := createUplink(t).Name()
	r := Routing{
		Link:     d.Name(),
		Routes:   []netip.Prefix{v4Default, v6Default},
		Excludes: []netip.Prefix{netip.MustParsePrefix("198.18.5.0/24"), netip.MustParsePrefix("2001:db8:5::/48")},
	}
	if err := r.Apply(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Remove() })

	tests := []struct {
		dst  string
		mark uint32
		want string
	}{
		{dst: "198.19.1.1", want: d.Name()},
		{dst: "2001:db8:99::1", want: d.Name()},
		{dst: "198.19.1.1", mark: DefaultFwMark, want: uplink},
		{dst: "2001:db8:99::1", mark: DefaultFwMark, want: uplink},
		{dst: "198.19.1.1", mark: 0x1, want: d.Name()},
		{dst: "198.18.5.7", want: uplink},      // excluded
		{dst: "2001:db8:5::7", want: uplink},   // excluded
		{dst: "198.18.200.7", want: uplink},    // uplink's own network
		{dst: "2001:db8:200::7", want: uplink}, // uplink's own network
	}
	// Lookups happen in the calling thread's namespace, which a subtest's
	// goroutine isn't in, so the cases run in this goroutine.
	for _, tt := range tests {
		got := lookupDev(t, netip.MustParseAddr(tt.dst), tt.mark)
		if got != tt.want {
			t.Errorf("route get %s mark %#x: dev %s, want %s", tt.dst, tt.mark, got, tt.want)
		}
	}

	if err := r.Remove(); err != nil {
		t.Fatal(err)
	}
	if got := lookupDev(t, netip.MustParseAddr("198.19.1.1"), 0); got != uplink {
		t.Errorf("route get 198.19.1.1 after Remove: dev %s, want %s", got, uplink)
	}
}

func TestRoutingApplyUndoesOnError(t *testing.T) {
	nstest.New(t)
	d := createTestTUN(t)
	// A rule that exists already with other attributes is kept, so
	// make the second family's route fail instead: IPv6 disabled on the
	// TUN refuses ::/0 dev mqtest0.
	if _, err := SetSysctl("net/ipv6/conf/"+d.Name()+"/disable_ipv6", "1"); err != nil {
		t.Fatal(err)
	}
	r := Routing{Link: d.Name(), Routes: []netip.Prefix{v4Default, v6Default}}
	err := r.Apply()
	if err == nil {
		t.Fatal("Apply() = nil, want error for ::/0")
	}
	if want := "apply routing: add route ::/0 dev mqtest0 table 19793: "; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Apply() = %q, want prefix %q", err, want)
	}
	rules, routes := routingState(t, &r)
	if len(rules) != 0 || len(routes) != 0 {
		t.Errorf("after failed Apply: rules %q, routes %q, want none", rules, routes)
	}
}

func TestRoutingApplyNoLink(t *testing.T) {
	nstest.New(t)
	r := Routing{Link: "nosuchlink", Routes: []netip.Prefix{v4Default}}
	err := r.Apply()
	if err == nil || !strings.HasPrefix(err.Error(), "apply routing: look up link nosuchlink: ") {
		t.Errorf("Apply() = %v, want look up link error", err)
	}
}

func createTestTUN(t *testing.T) *Device {
	t.Helper()
	d, err := Create(Config{Name: "mqtest0", Addrs: []netip.Prefix{
		netip.MustParsePrefix("100.64.0.2/32"), netip.MustParsePrefix("fd6d:6173:7175:6500::2/128"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// createUplink creates a second TUN with addresses and a default route
// in the main table, standing in for the host's physical interface.
func createUplink(t *testing.T) *Device {
	t.Helper()
	d, err := Create(Config{Name: "mqup0", Addrs: []netip.Prefix{
		netip.MustParsePrefix("198.18.200.1/24"), netip.MustParsePrefix("2001:db8:200::1/64"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	link, err := netlink.LinkByName(d.Name())
	if err != nil {
		t.Fatal(err)
	}
	for _, gw := range []string{"198.18.200.254", "2001:db8:200::fe"} {
		g := netip.MustParseAddr(gw)
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.IP(g.AsSlice())}); err != nil {
			t.Fatalf("add default via %s: %v", gw, err)
		}
	}
	return d
}

func lookupDev(t *testing.T, dst netip.Addr, mark uint32) string {
	t.Helper()
	routes, err := netlink.RouteGetWithOptions(net.IP(dst.AsSlice()), &netlink.RouteGetOptions{Mark: mark})
	if err != nil || len(routes) == 0 {
		t.Fatalf("route get %s mark %#x: %v, %v", dst, mark, routes, err)
	}
	link, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		t.Fatal(err)
	}
	return link.Attrs().Name
}

// routingState returns, in the calling thread's namespace, the rules at
// r's two priorities and the routes in r's table, as text.
func routingState(t *testing.T, r *Routing) (rules, routes []string) {
	t.Helper()
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		fname := map[int]string{unix.AF_INET: "v4", unix.AF_INET6: "v6"}[fam]
		rs, err := netlink.RuleList(fam)
		if err != nil {
			t.Fatal(err)
		}
		for _, rule := range rs {
			if rule.Priority != r.priority() && rule.Priority != r.priority()+1 {
				continue
			}
			if rule.Invert {
				rules = append(rules, fmt.Sprintf("%s pref %d not fwmark %#x lookup %d", fname, rule.Priority, rule.Mark, rule.Table))
			} else {
				rules = append(rules, fmt.Sprintf("%s pref %d lookup %d suppress_prefixlength %d", fname, rule.Priority, rule.Table, rule.SuppressPrefixlen))
			}
		}
		rts, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: r.table()}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatal(err)
		}
		for _, rt := range rts {
			var s string
			switch rt.Type {
			case unix.RTN_UNICAST:
				link, err := netlink.LinkByIndex(rt.LinkIndex)
				if err != nil {
					t.Fatal(err)
				}
				s = fmt.Sprintf("table %d unicast %v dev %s", rt.Table, rt.Dst, link.Attrs().Name)
			case unix.RTN_THROW:
				s = fmt.Sprintf("table %d throw %v", rt.Table, rt.Dst)
			default:
				s = fmt.Sprintf("table %d type %d %v", rt.Table, rt.Type, rt.Dst)
			}
			routes = append(routes, s)
		}
	}
	slices.Sort(rules)
	slices.Sort(routes)
	return rules, routes
}

// TestRoutingReplace: a new set of routes replaces the old in the table,
// keeping the rules; routes and throws of the old set not in the new one
// go.
func TestRoutingReplace(t *testing.T) {
	nstest.New(t)
	d := createTestTUN(t)
	p := netip.MustParsePrefix
	old := Routing{Link: d.Name(), Routes: []netip.Prefix{p("198.18.2.0/24"), p("198.18.4.0/24")}, Excludes: []netip.Prefix{p("198.18.2.1/32")}}
	if err := old.Apply(); err != nil {
		t.Fatal(err)
	}
	next := Routing{Link: d.Name(), Routes: []netip.Prefix{p("198.18.4.0/24"), p("198.18.6.0/24")}, Excludes: []netip.Prefix{p("198.18.6.1/32")}}
	if err := next.Replace(&old); err != nil {
		t.Fatalf("Replace = %v", err)
	}
	rules, routes := routingState(t, &next)
	want := []string{
		"table 19793 throw 198.18.6.1/32",
		"table 19793 unicast 198.18.4.0/24 dev mqtest0",
		"table 19793 unicast 198.18.6.0/24 dev mqtest0",
	}
	if diff := cmp.Diff(want, routes); diff != "" {
		t.Errorf("routes after Replace (-want +got):\n%s", diff)
	}
	if len(rules) != 2 {
		t.Errorf("rules after Replace: %q, want the two IPv4 rules kept", rules)
	}
	if err := next.Replace(&Routing{Table: 100}); err == nil {
		t.Error("Replace of another table's routing = nil, want an error")
	}
}
