package tun

import (
	"encoding/binary"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/masque-vpn/masque/tun/internal/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// readSysctl returns /proc/sys/<key> without its newline.
func readSysctl(t *testing.T, key string) string {
	t.Helper()
	b, err := os.ReadFile(sysctlRoot + key)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(string(b), "\n")
}

// linkLocals returns the IPv6 link-local addresses of the link name.
func linkLocals(t *testing.T, name string) []netip.Addr {
	t.Helper()
	link, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := netlink.AddrList(link, unix.AF_INET6)
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p := ipNetPrefix(a.IPNet); p.Addr().IsLinkLocalUnicast() {
			out = append(out, p.Addr())
		}
	}
	return out
}

// checkEndHost checks that the link name has no link-local address and
// that its end-host sysctls read back as set.
func checkEndHost(t *testing.T, d *Device, ipv6, forward bool) {
	t.Helper()
	// The kernel adds link-local addresses when the link goes up, and
	// from a workqueue: give it the time it would take.
	time.Sleep(100 * time.Millisecond)
	if ll := linkLocals(t, d.Name()); len(ll) > 0 {
		t.Errorf("link %s has link-local addresses %v, want none", d.Name(), ll)
	}
	want := endHostSysctls(d.Name(), ipv6, forward)
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if got := readSysctl(t, k); got != want[k] {
			t.Errorf("%s = %s, want %s", k, got, want[k])
		}
	}
	got := d.Sysctls()
	if !slices.Equal(slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want))) {
		t.Errorf("Sysctls() keys = %v, want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if !strings.HasPrefix(k, "net/ipv4/conf/"+d.Name()+"/") && !strings.HasPrefix(k, "net/ipv6/conf/"+d.Name()+"/") {
			t.Errorf("sysctl %s is not one of the link's own", k)
		}
	}
}

func TestCreateEndHost(t *testing.T) {
	for _, tt := range []struct {
		name  string
		cfg   Config
		ipv6  bool
		setTo int // SetMTU after Create, 0: none
	}{
		{name: "dual stack", ipv6: true, cfg: Config{Name: "mqeh0", MTU: 1400, Addrs: []netip.Prefix{
			netip.MustParsePrefix("198.18.0.2/32"), netip.MustParsePrefix("2001:db8::2/128"),
		}}},
		{name: "ipv4 only", cfg: Config{Name: "mqeh1", MTU: 1400, Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.0.2/32")}}},
		// Replies to the hosts behind this one arrive on the link.
		{name: "allow forward", ipv6: true, cfg: Config{Name: "mqeh3", MTU: 1400, AllowForward: true, Addrs: []netip.Prefix{
			netip.MustParsePrefix("198.18.0.2/32"), netip.MustParsePrefix("2001:db8::2/128"),
		}}},
		// Below 1280 the link has no IPv6 configuration; raising the MTU
		// brings one back with the defaults, and a link-local address.
		{name: "ipv4 only, small then large", setTo: 1400, cfg: Config{Name: "mqeh2", MTU: 1000, Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.0.2/32")}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			nstest.New(t)
			// Hosts commonly take router advertisements on new links.
			for _, k := range []string{"accept_ra", "autoconf", "accept_redirects"} {
				if _, err := SetSysctl("net/ipv6/conf/default/"+k, "1"); err != nil {
					t.Fatal(err)
				}
			}
			// A new link inherits the default forwarding, the opposite
			// of what the end host's gets: Create must change it.
			wantFwd := map[bool]string{false: "0", true: "1"}[tt.cfg.AllowForward]
			if _, err := SetSysctl("net/ipv4/conf/default/forwarding", map[bool]string{false: "1", true: "0"}[tt.cfg.AllowForward]); err != nil {
				t.Fatal(err)
			}
			tt.cfg.EndHost = true
			d, err := Create(tt.cfg)
			if err != nil {
				t.Fatalf("Create(%+v) = %v", tt.cfg, err)
			}
			defer d.Close()
			if got := readSysctl(t, "net/ipv4/conf/"+d.Name()+"/forwarding"); got != wantFwd {
				t.Errorf("net/ipv4/conf/%s/forwarding = %s, want %s", d.Name(), got, wantFwd)
			}
			if tt.setTo != 0 {
				if err := d.SetMTU(tt.setTo); err != nil {
					t.Fatalf("SetMTU(%d) = %v", tt.setTo, err)
				}
			}
			checkEndHost(t, d, tt.ipv6, tt.cfg.AllowForward)
			if tt.setTo != 0 {
				// Down below 1280 and up again.
				if err := d.SetMTU(1200); err != nil {
					t.Fatalf("SetMTU(1200) = %v", err)
				}
				if err := d.SetMTU(1500); err != nil {
					t.Fatalf("SetMTU(1500) = %v", err)
				}
				checkEndHost(t, d, tt.ipv6, tt.cfg.AllowForward)
			}
		})
	}
}

// TestCreateNotEndHost: a server's TUN keeps the kernel's defaults.
func TestCreateNotEndHost(t *testing.T) {
	nstest.New(t)
	d, err := Create(Config{Name: "mqeh0", Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.0.1/16")}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := d.Sysctls(); len(got) != 0 {
		t.Errorf("Sysctls() = %v, want none", got)
	}
	if got, want := readSysctl(t, "net/ipv4/conf/mqeh0/forwarding"), readSysctl(t, "net/ipv4/conf/default/forwarding"); got != want {
		t.Errorf("forwarding = %s, want the default %s", got, want)
	}
}

// TestEndHostIgnoresRouterAdvertisement writes a router advertisement
// into a TUN, as a hostile server would send it: a TUN with the kernel's
// defaults takes the prefix and the default route from it, an end host's
// TUN takes nothing.
func TestEndHostIgnoresRouterAdvertisement(t *testing.T) {
	for _, endHost := range []bool{false, true} {
		name := map[bool]string{false: "defaults", true: "end host"}[endHost]
		t.Run(name, func(t *testing.T) {
			nstest.New(t)
			for _, k := range []string{"accept_ra", "autoconf"} {
				if _, err := SetSysctl("net/ipv6/conf/default/"+k, "1"); err != nil {
					t.Fatal(err)
				}
			}
			d, err := Create(Config{Name: "mqra0", MTU: 1400, EndHost: endHost, Addrs: []netip.Prefix{netip.MustParsePrefix("2001:db8::2/128")}})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			link, err := netlink.LinkByName("mqra0")
			if err != nil {
				t.Fatal(err)
			}
			ra := appendRA(make([]byte, Headroom, Headroom+128), netip.MustParseAddr("fe80::1"), netip.MustParsePrefix("2001:db8:77::/64"))
			learnt := func() (routes []string) {
				rs, err := netlink.RouteList(link, unix.AF_INET6)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range rs {
					if r.Dst == nil || strings.HasPrefix(r.Dst.String(), "2001:db8:77:") || r.Dst.String() == "::/0" {
						routes = append(routes, r.String())
					}
				}
				addrs, err := netlink.AddrList(link, unix.AF_INET6)
				if err != nil {
					t.Fatal(err)
				}
				for _, a := range addrs {
					if strings.HasPrefix(a.IPNet.String(), "2001:db8:77:") {
						routes = append(routes, "address "+a.IPNet.String())
					}
				}
				return routes
			}
			deadline := time.Now().Add(2 * time.Second)
			for {
				// Resent until learnt: the link-local address of a link
				// with defaults may still be tentative at first.
				buf := slices.Clone(ra)
				if _, err := d.Write([][]byte{buf}, Headroom); err != nil {
					t.Fatalf("Write(RA) = %v", err)
				}
				time.Sleep(50 * time.Millisecond)
				got := learnt()
				if endHost && time.Now().After(deadline) {
					return
				}
				if endHost && len(got) > 0 {
					t.Fatalf("after a router advertisement the end host's TUN has %v, want nothing", got)
				}
				if !endHost && len(got) >= 2 {
					return // the control: a default TUN obeys it
				}
				if !endHost && time.Now().After(deadline) {
					t.Fatalf("a TUN with the defaults learnt %v from the router advertisement, want the prefix and the default route (is the test's RA wrong?)", got)
				}
			}
		})
	}
}

// appendRA appends an IPv6 router advertisement from src to ff02::1 with
// a router lifetime of 1800 s and a prefix information option for
// prefix (on-link, autonomous).
func appendRA(b []byte, src netip.Addr, prefix netip.Prefix) []byte {
	dst := netip.MustParseAddr("ff02::1")
	const icmpLen = 16 + 32
	b = append(b, 0x60, 0, 0, 0, 0, icmpLen, unix.IPPROTO_ICMPV6, 255)
	b = append(b, src.AsSlice()...)
	b = append(b, dst.AsSlice()...)
	icmp := len(b)
	b = append(b, 134, 0, 0, 0, 64, 0)
	b = binary.BigEndian.AppendUint16(b, 1800) // router lifetime
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0)      // reachable, retrans timers
	b = append(b, 3, 4, byte(prefix.Bits()), 0xc0)
	b = binary.BigEndian.AppendUint32(b, 86400) // valid lifetime
	b = binary.BigEndian.AppendUint32(b, 14400) // preferred lifetime
	b = append(b, 0, 0, 0, 0)
	b = append(b, prefix.Addr().AsSlice()...)
	var s uint32
	s = checksum(s, src.AsSlice())
	s = checksum(s, dst.AsSlice())
	s += unix.IPPROTO_ICMPV6 + icmpLen
	binary.BigEndian.PutUint16(b[icmp+2:], ^uint16(fold(checksum(s, b[icmp:]))))
	return b
}
