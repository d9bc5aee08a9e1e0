package policy

import (
	"math/rand/v2"
	"net/netip"
	"regexp"
	"strings"
	"testing"
)

var testDestinationsConfig = DestinationsConfig{
	ServerAddrs: []netip.Addr{
		netip.MustParseAddr("198.18.0.1"),
		netip.MustParseAddr("2001:db8::1"),
		netip.MustParseAddr("100.64.0.1"), // pool gateway
		netip.MustParseAddr("fd00:1::1"),
		netip.MustParseAddr("::ffff:198.18.0.2"), // mapped: treated as IPv4
	},
	ServerPrefixes: []netip.Prefix{
		netip.MustParsePrefix("198.18.0.1/24"),
		netip.MustParsePrefix("2001:db8::1/64"),
		netip.MustParsePrefix("100.64.0.1/10"),
		netip.MustParsePrefix("fd00:1::1/64"),
	},
	ClientPrefixes: []netip.Prefix{
		netip.MustParsePrefix("100.64.0.0/10"),
		netip.MustParsePrefix("fd00:1::/64"),
	},
	Deny: []netip.Prefix{
		netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("2001:db8:dead::/48"),
		netip.MustParsePrefix("::ffff:203.0.113.0/120"), // mapped: treated as 203.0.113.0/24
	},
}

func mustDestinations(t testing.TB, cfg DestinationsConfig) *Destinations {
	t.Helper()
	d, err := NewDestinations(cfg)
	if err != nil {
		t.Fatalf("NewDestinations = %v", err)
	}
	return d
}

func TestReasonString(t *testing.T) {
	want := map[Reason]string{
		ReasonNone:          "none",
		ReasonLoopback:      "loopback",
		ReasonLinkLocal:     "link_local",
		ReasonMulticast:     "multicast",
		ReasonMetadata:      "metadata",
		ReasonUnspecified:   "unspecified",
		ReasonServerAddress: "server_address",
		ReasonOtherClient:   "other_client",
		ReasonOperatorDeny:  "operator_deny",
		Reason(200):         "reason_200",
	}
	snake := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	for r, w := range want {
		t.Run(w, func(t *testing.T) {
			if got := r.String(); got != w || !snake.MatchString(got) {
				t.Errorf("Reason(%d).String() = %q, want %q", uint8(r), got, w)
			}
			if r.Denied() != (r != ReasonNone) {
				t.Errorf("Reason(%d).Denied() = %v", uint8(r), r.Denied())
			}
		})
	}
	if len(want) != int(numReasons)+1 {
		t.Errorf("test covers %d reasons, want %d", len(want)-1, numReasons)
	}
}

func TestDestinationsCheck(t *testing.T) {
	d := mustDestinations(t, testDestinationsConfig)
	tests := []struct {
		dst  string
		want Reason
	}{
		{"8.8.8.8", ReasonNone},
		{"2606:4700::1111", ReasonNone},
		{"198.18.0.3", ReasonNone},
		{"10.0.0.1", ReasonNone},
		{"240.0.0.1", ReasonNone},
		{"127.0.0.1", ReasonLoopback},
		{"127.255.255.255", ReasonLoopback},
		{"::1", ReasonLoopback},
		{"::ffff:127.0.0.1", ReasonLoopback},
		{"169.254.1.1", ReasonLinkLocal},
		{"169.254.169.253", ReasonLinkLocal},
		{"fe80::1", ReasonLinkLocal},
		{"fe80::1%eth0", ReasonLinkLocal},
		{"febf:ffff::1", ReasonLinkLocal},
		{"fec0::1", ReasonNone},
		{"224.0.0.1", ReasonMulticast},
		{"239.255.255.255", ReasonMulticast},
		{"255.255.255.255", ReasonMulticast},
		{"255.255.255.254", ReasonNone},
		{"ff02::1", ReasonMulticast},
		{"169.254.169.254", ReasonMetadata},
		{"::ffff:169.254.169.254", ReasonMetadata},
		{"fd00:ec2::254", ReasonMetadata},
		{"0.0.0.0", ReasonUnspecified},
		{"0.1.2.3", ReasonUnspecified},
		{"::", ReasonUnspecified},
		{"::2", ReasonNone},
		{"198.18.0.1", ReasonServerAddress},
		{"198.18.0.2", ReasonServerAddress},
		{"::ffff:198.18.0.1", ReasonServerAddress},
		{"2001:db8::1", ReasonServerAddress},
		{"100.64.0.1", ReasonServerAddress},
		{"fd00:1::1", ReasonServerAddress},
		{"100.64.0.2", ReasonOtherClient},
		{"100.127.255.254", ReasonOtherClient},
		{"100.127.255.255", ReasonMulticast}, // the pool's broadcast: ServerPrefixes 100.64.0.1/10
		{"198.18.0.255", ReasonMulticast},    // directed broadcast of 198.18.0.1/24
		{"198.18.0.3", ReasonNone},
		{"2001:db8::", ReasonServerAddress}, // subnet-router anycast of 2001:db8::1/64
		{"fd00:1::", ReasonServerAddress},   // and of the pool, fd00:1::1/64
		{"100.128.0.0", ReasonNone},
		{"fd00:1::2", ReasonOtherClient},
		{"fd00:1:0:0:ffff:ffff:ffff:ffff", ReasonOtherClient},
		{"fd00:1:0:1::", ReasonNone},
		{"198.51.100.7", ReasonOperatorDeny},
		{"203.0.113.9", ReasonOperatorDeny},
		{"::ffff:203.0.113.9", ReasonOperatorDeny},
		{"2001:db8:dead:beef::1", ReasonOperatorDeny},
		{"2001:db8:deae::1", ReasonNone},
		{"::ffff:0:0", ReasonUnspecified}, // mapped 0.0.0.0
		{"::ffff:8.8.8.8", ReasonNone},    // mapped, allowed
		{"::127.0.0.1", ReasonNone},       // IPv4-compatible is plain IPv6
		{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", ReasonMulticast},
		{"", ReasonUnspecified},
	}
	for _, tt := range tests {
		t.Run(tt.dst, func(t *testing.T) {
			var dst netip.Addr
			if tt.dst != "" {
				dst = netip.MustParseAddr(tt.dst)
			}
			if got := d.Check(dst); got != tt.want {
				t.Errorf("Check(%v) = %v, want %v", dst, got, tt.want)
			}
		})
	}
}

func TestDestinationsAllow(t *testing.T) {
	p := netip.MustParsePrefix
	tests := []struct {
		name string
		cfg  DestinationsConfig
		dst  string
		want Reason
	}{
		{"link-local opened", DestinationsConfig{Allow: []netip.Prefix{p("169.254.0.0/16")}}, "169.254.1.1", ReasonNone},
		{"link-local opened, metadata not", DestinationsConfig{Allow: []netip.Prefix{p("169.254.0.0/16")}}, "169.254.169.254", ReasonMetadata},
		{"metadata opened", DestinationsConfig{Allow: []netip.Prefix{p("169.254.169.254/32")}}, "169.254.169.254", ReasonNone},
		{"metadata opened, link-local not", DestinationsConfig{Allow: []netip.Prefix{p("169.254.169.254/32")}}, "169.254.169.253", ReasonLinkLocal},
		{"equal length beats default", DestinationsConfig{Allow: []netip.Prefix{p("127.0.0.0/8")}}, "127.0.0.53", ReasonNone},
		{"shorter allow loses", DestinationsConfig{Allow: []netip.Prefix{p("0.0.0.0/0")}}, "127.0.0.1", ReasonLoopback},
		{"longer allow wins", DestinationsConfig{Allow: []netip.Prefix{p("127.0.0.53/32")}}, "127.0.0.53", ReasonNone},
		{"longer allow, other address", DestinationsConfig{Allow: []netip.Prefix{p("127.0.0.53/32")}}, "127.0.0.54", ReasonLoopback},
		{"ipv6 loopback", DestinationsConfig{Allow: []netip.Prefix{p("::1/128")}}, "::1", ReasonNone},
		{"mapped allow", DestinationsConfig{Allow: []netip.Prefix{p("::ffff:127.0.0.0/104")}}, "127.0.0.1", ReasonNone},
		{"ipv6 allow all does not touch ipv4", DestinationsConfig{Allow: []netip.Prefix{p("::/0")}, Deny: []netip.Prefix{p("0.0.0.0/0")}}, "8.8.8.8", ReasonOperatorDeny},
		{"ipv6 deny all does not touch mapped", DestinationsConfig{Deny: []netip.Prefix{p("::/0")}}, "::ffff:8.8.8.8", ReasonNone},
		{"ipv6 deny all", DestinationsConfig{Deny: []netip.Prefix{p("::/0")}}, "2606:4700::1", ReasonOperatorDeny},
		{"deny beats allow at equal length", DestinationsConfig{Allow: []netip.Prefix{p("10.0.0.0/8")}, Deny: []netip.Prefix{p("10.0.0.0/8")}}, "10.1.2.3", ReasonOperatorDeny},
		{"longer allow inside deny", DestinationsConfig{Allow: []netip.Prefix{p("10.1.0.0/16")}, Deny: []netip.Prefix{p("10.0.0.0/8")}}, "10.1.2.3", ReasonNone},
		{"longer allow inside deny, outside", DestinationsConfig{Allow: []netip.Prefix{p("10.1.0.0/16")}, Deny: []netip.Prefix{p("10.0.0.0/8")}}, "10.2.0.1", ReasonOperatorDeny},
		{"longer deny inside allow", DestinationsConfig{Allow: []netip.Prefix{p("10.0.0.0/8")}, Deny: []netip.Prefix{p("10.1.0.0/16")}}, "10.1.2.3", ReasonOperatorDeny},
		{"deny inside default", DestinationsConfig{Deny: []netip.Prefix{p("127.0.0.0/16")}}, "127.0.0.1", ReasonOperatorDeny},
		{"allow other client", DestinationsConfig{ClientPrefixes: []netip.Prefix{p("100.64.0.0/10")}, Allow: []netip.Prefix{p("100.64.0.5/32")}}, "100.64.0.5", ReasonNone},
		{"allow other client, others not", DestinationsConfig{ClientPrefixes: []netip.Prefix{p("100.64.0.0/10")}, Allow: []netip.Prefix{p("100.64.0.5/32")}}, "100.64.0.6", ReasonOtherClient},
		{"client to client", DestinationsConfig{ClientPrefixes: []netip.Prefix{p("100.64.0.0/10")}, AllowClientToClient: true}, "100.64.0.6", ReasonNone},
		{"client to client, server still denied", DestinationsConfig{ServerAddrs: []netip.Addr{netip.MustParseAddr("100.64.0.1")}, ClientPrefixes: []netip.Prefix{p("100.64.0.0/10")}, AllowClientToClient: true}, "100.64.0.1", ReasonServerAddress},
		{"allow server address", DestinationsConfig{ServerAddrs: []netip.Addr{netip.MustParseAddr("198.18.0.1")}, Allow: []netip.Prefix{p("198.18.0.1/32")}}, "198.18.0.1", ReasonNone},
		{"server address in loopback", DestinationsConfig{ServerAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}, "127.0.0.1", ReasonServerAddress},
		{"server address equals ::1", DestinationsConfig{ServerAddrs: []netip.Addr{netip.MustParseAddr("::1")}}, "::1", ReasonLoopback},
		{"zoned server address", DestinationsConfig{ServerAddrs: []netip.Addr{netip.MustParseAddr("2001:db8::7%eth0")}}, "2001:db8::7", ReasonServerAddress},
		{"deny everything", DestinationsConfig{Deny: []netip.Prefix{p("0.0.0.0/0")}}, "8.8.8.8", ReasonOperatorDeny},
		{"deny everything beats default", DestinationsConfig{Deny: []netip.Prefix{p("0.0.0.0/0")}}, "127.0.0.1", ReasonLoopback},
		{"deny last address", DestinationsConfig{Deny: []netip.Prefix{p("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128")}}, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", ReasonOperatorDeny},
		{"server prefix: its address", DestinationsConfig{ServerPrefixes: []netip.Prefix{p("198.18.2.1/24")}}, "198.18.2.1", ReasonServerAddress},
		{"server prefix: directed broadcast", DestinationsConfig{ServerPrefixes: []netip.Prefix{p("198.18.2.1/24")}}, "198.18.2.255", ReasonMulticast},
		{"server prefix: network address", DestinationsConfig{ServerPrefixes: []netip.Prefix{p("198.18.2.1/24")}}, "198.18.2.0", ReasonNone},
		{"server prefix: another host", DestinationsConfig{ServerPrefixes: []netip.Prefix{p("198.18.2.1/24")}}, "198.18.2.2", ReasonNone},
		{"server prefix /30 broadcast", DestinationsConfig{ServerPrefixes: []netip.Prefix{p("198.18.2.5/30")}}, "198.18.2.7", ReasonMulticast},
		{"server prefix /31 has no broadcast", DestinationsConfig{ServerPrefixes: []netip.Prefix{p("198.18.2.4/31")}}, "198.18.2.5", ReasonNone},
		{"server prefix /32", DestinationsConfig{ServerPrefixes: []netip.Prefix{p("198.18.2.4/32")}}, "198.18.2.4", ReasonServerAddress},
		{"mapped server prefix", DestinationsConfig{ServerPrefixes: []netip.Prefix{p("::ffff:198.18.2.1/120")}}, "198.18.2.255", ReasonMulticast},
		{"server prefix: subnet-router anycast", DestinationsConfig{ServerPrefixes: []netip.Prefix{p("2001:db8:2::1/64")}}, "2001:db8:2::", ReasonServerAddress},
		{"server prefix: ipv6 address", DestinationsConfig{ServerPrefixes: []netip.Prefix{p("2001:db8:2::1/64")}}, "2001:db8:2::1", ReasonServerAddress},
		{"server prefix: ipv6 other host", DestinationsConfig{ServerPrefixes: []netip.Prefix{p("2001:db8:2::1/64")}}, "2001:db8:2::2", ReasonNone},
		{"server prefix /127 has no anycast", DestinationsConfig{ServerPrefixes: []netip.Prefix{p("2001:db8:2::1/127")}}, "2001:db8:2::", ReasonNone},
		{"zoned server prefix", DestinationsConfig{ServerPrefixes: []netip.Prefix{netip.PrefixFrom(netip.MustParseAddr("2001:db8:2::1%eth0"), 64)}}, "2001:db8:2::", ReasonServerAddress},
		{"pool broadcast with client to client", DestinationsConfig{ServerPrefixes: []netip.Prefix{p("100.64.0.1/16")}, ClientPrefixes: []netip.Prefix{p("100.64.0.0/16")}, AllowClientToClient: true}, "100.64.255.255", ReasonMulticast},
		{"pool anycast with client to client", DestinationsConfig{ServerPrefixes: []netip.Prefix{p("fd00:1::1/64")}, ClientPrefixes: []netip.Prefix{p("fd00:1::/64")}, AllowClientToClient: true}, "fd00:1::", ReasonServerAddress},
		{"pool client with client to client", DestinationsConfig{ServerPrefixes: []netip.Prefix{p("100.64.0.1/16")}, ClientPrefixes: []netip.Prefix{p("100.64.0.0/16")}, AllowClientToClient: true}, "100.64.0.2", ReasonNone},
		{"allow directed broadcast", DestinationsConfig{ServerPrefixes: []netip.Prefix{p("198.18.2.1/24")}, Allow: []netip.Prefix{p("198.18.2.255/32")}}, "198.18.2.255", ReasonNone},
		{"allow ipv4 broadcast", DestinationsConfig{Allow: []netip.Prefix{p("255.255.255.255/32")}}, "255.255.255.255", ReasonNone},
		{"allow ipv4 broadcast, multicast not", DestinationsConfig{Allow: []netip.Prefix{p("255.255.255.255/32")}}, "224.0.0.1", ReasonMulticast},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := mustDestinations(t, tt.cfg)
			dst := netip.MustParseAddr(tt.dst)
			if got := d.Check(dst); got != tt.want {
				t.Errorf("Check(%v) = %v, want %v", dst, got, tt.want)
			}
			if ref := refCheck(tt.cfg, dst); ref != tt.want {
				t.Errorf("reference Check(%v) = %v, want %v", dst, ref, tt.want)
			}
		})
	}
}

func TestNewDestinationsErrors(t *testing.T) {
	p := netip.MustParsePrefix
	tests := []struct {
		name    string
		cfg     DestinationsConfig
		wantErr []string
	}{
		{
			name:    "unmasked allow",
			cfg:     DestinationsConfig{Allow: []netip.Prefix{p("10.0.0.0/8"), p("10.0.0.1/8")}},
			wantErr: []string{"Allow[1]: 10.0.0.1/8 not masked (want 10.0.0.0/8)"},
		},
		{
			name: "all reported",
			cfg: DestinationsConfig{
				ServerAddrs:    []netip.Addr{{}},
				ServerPrefixes: []netip.Prefix{p("198.18.2.1/24"), {}},
				ClientPrefixes: []netip.Prefix{p("100.64.0.1/10")},
				Allow:          []netip.Prefix{{}},
				Deny:           []netip.Prefix{p("2001:db8::1/32")},
			},
			wantErr: []string{
				"ServerAddrs[0]: invalid address",
				"ServerPrefixes[1]: invalid prefix",
				"ClientPrefixes[0]: 100.64.0.1/10 not masked",
				"Allow[0]: invalid prefix",
				"Deny[0]: 2001:db8::1/32 not masked",
			},
		},
		{
			name:    "client prefixes validated with client to client",
			cfg:     DestinationsConfig{ClientPrefixes: []netip.Prefix{p("100.64.0.1/10")}, AllowClientToClient: true},
			wantErr: []string{"ClientPrefixes[0]: 100.64.0.1/10 not masked"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := NewDestinations(tt.cfg)
			if err == nil {
				t.Fatalf("NewDestinations = %v, nil, want error", d)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("NewDestinations = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

// refCheck is a slow reference for Destinations.Check: scan every rule, the
// longest matching prefix wins, ties go to Deny, then Allow, then defaults.
func refCheck(cfg DestinationsConfig, dst netip.Addr) Reason {
	dst = dst.Unmap().WithZone("")
	if !dst.IsValid() {
		return ReasonUnspecified
	}
	type r struct {
		p    netip.Prefix
		why  Reason
		rank int
	}
	var rules []r
	for _, d := range defaultDenies {
		rules = append(rules, r{d.prefix, d.reason, rankDefault(d.reason)})
	}
	for _, a := range cfg.ServerAddrs {
		a = a.Unmap().WithZone("")
		rules = append(rules, r{netip.PrefixFrom(a, a.BitLen()), ReasonServerAddress, rankDefault(ReasonServerAddress)})
	}
	for _, p := range cfg.ServerPrefixes {
		a, bits := p.Addr().WithZone(""), p.Bits()
		if a.Is4In6() {
			a, bits = a.Unmap(), max(0, bits-96)
		}
		one := func(b netip.Addr, why Reason) r { return r{netip.PrefixFrom(b, b.BitLen()), why, rankDefault(why)} }
		rules = append(rules, one(a, ReasonServerAddress))
		net := netip.PrefixFrom(a, bits).Masked()
		if a.Is4() && bits < 31 {
			rules = append(rules, one(lastAddr(net), ReasonMulticast))
		}
		if a.Is6() && bits < 127 {
			rules = append(rules, one(net.Addr(), ReasonServerAddress))
		}
	}
	if !cfg.AllowClientToClient {
		for _, p := range cfg.ClientPrefixes {
			rules = append(rules, r{p, ReasonOtherClient, rankDefault(ReasonOtherClient)})
		}
	}
	for _, p := range cfg.Allow {
		rules = append(rules, r{p, ReasonNone, rankAllow})
	}
	for _, p := range cfg.Deny {
		rules = append(rules, r{p, ReasonOperatorDeny, rankDeny})
	}
	best, bits, rank := ReasonNone, -1, 0
	for _, ru := range rules {
		p := ru.p
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		if !p.Contains(dst) {
			continue
		}
		if p.Bits() > bits || p.Bits() == bits && ru.rank < rank {
			best, bits, rank = ru.why, p.Bits(), ru.rank
		}
	}
	return best
}

// TestDestinationsReference compares Check with refCheck on random
// addresses near every rule boundary.
func TestDestinationsReference(t *testing.T) {
	cfg := testDestinationsConfig
	p := netip.MustParsePrefix
	cfg.Allow = []netip.Prefix{p("169.254.0.0/16"), p("100.64.1.0/24"), p("198.51.100.128/25"), p("fe80::/64"), p("2001:db8:dead:1::/64")}
	cfg.Deny = append(cfg.Deny, p("100.64.1.128/25"), p("10.0.0.0/8"), p("10.0.0.0/8"), p("fe80::1/128"))
	d := mustDestinations(t, cfg)
	rng := rand.New(rand.NewPCG(1, 2))
	var addrs []netip.Addr
	var prefixes []netip.Prefix
	prefixes = append(prefixes, cfg.ClientPrefixes...)
	prefixes = append(prefixes, cfg.Allow...)
	prefixes = append(prefixes, cfg.Deny...)
	for _, dd := range defaultDenies {
		prefixes = append(prefixes, dd.prefix)
	}
	for _, pf := range prefixes {
		first := pf.Addr()
		last := lastAddr(pf)
		addrs = append(addrs, first, first.Prev(), first.Next(), last, last.Prev(), last.Next())
	}
	addrs = append(addrs, cfg.ServerAddrs...)
	for _, pf := range cfg.ServerPrefixes {
		m := pf.Masked()
		addrs = append(addrs, pf.Addr(), m.Addr(), m.Addr().Next(), lastAddr(m), lastAddr(m).Prev())
	}
	for range 10000 {
		var b [16]byte
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		addrs = append(addrs, netip.AddrFrom16(b), netip.AddrFrom4([4]byte(b[:4])))
	}
	for _, a := range addrs {
		if got, want := d.Check(a), refCheck(cfg, a); got != want {
			t.Errorf("Check(%v) = %v, reference %v", a, got, want)
		}
	}
}

// lastAddr returns the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func TestDestinationsCheckAllocs(t *testing.T) {
	d := mustDestinations(t, testDestinationsConfig)
	addrs := []netip.Addr{
		netip.MustParseAddr("8.8.8.8"),
		netip.MustParseAddr("::ffff:127.0.0.1"),
		netip.MustParseAddr("2001:db8::1"),
		netip.MustParseAddr("fe80::1%eth0"),
		{},
	}
	for _, a := range addrs {
		if n := testing.AllocsPerRun(1000, func() { d.Check(a) }); n != 0 {
			t.Errorf("Check(%v) allocs = %v, want 0", a, n)
		}
	}
}

func BenchmarkDestinationsCheck(b *testing.B) {
	cfg := testDestinationsConfig
	// A realistic operator list plus a long one.
	for i := range 1000 {
		cfg.Deny = append(cfg.Deny, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24))
	}
	d := mustDestinations(b, cfg)
	for _, dst := range []string{"8.8.8.8", "10.3.200.1", "::ffff:127.0.0.1", "2606:4700::1111", "fd00:1::2"} {
		b.Run(dst, func(b *testing.B) {
			a := netip.MustParseAddr(dst)
			b.ReportAllocs()
			for b.Loop() {
				d.Check(a)
			}
		})
	}
}

// FuzzDestinationsCheck checks that Check is deterministic, treats an IPv4
// address and its IPv4-mapped form alike, ignores zones, and agrees with
// the slow reference on a configuration built from the input.
func FuzzDestinationsCheck(f *testing.F) {
	f.Add([]byte{127, 0, 0, 1}, []byte{})
	f.Add([]byte{169, 254, 169, 254}, []byte{0, 16, 169, 254, 0, 0})
	f.Add([]byte{0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, []byte{2, 10, 0xfe, 0x80, 0, 0, 3, 128, 0xfe, 0x80, 0, 0})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3}, []byte{1, 8, 10, 0, 0, 0, 0, 16, 10, 1, 0, 0})
	f.Add([]byte{100, 64, 0, 9}, []byte{8, 10, 100, 64, 0, 0, 4, 32, 100, 64, 0, 9, 16, 10, 100, 64, 0, 0})
	f.Add([]byte{198, 18, 2, 255}, []byte{64, 24, 198, 18, 2, 1, 16 | 8, 16, 198, 18, 0, 0})
	f.Add([]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, []byte{64 | 2, 32, 0x20, 0x01, 0x0d, 0xb8})
	f.Fuzz(func(t *testing.T, addr, rules []byte) {
		var cfg DestinationsConfig
		for ; len(rules) >= 6; rules = rules[6:] {
			kind, bits, b := rules[0], int(rules[1]), [4]byte(rules[2:6])
			var a netip.Addr
			switch {
			case kind&32 != 0: // IPv4-mapped IPv6
				a = netip.AddrFrom16(netip.AddrFrom4(b).As16())
				bits = 96 + bits%33
			case kind&2 == 0:
				a = netip.AddrFrom4(b)
				bits %= 33
			default:
				var b16 [16]byte
				copy(b16[:], b[:])
				a = netip.AddrFrom16(b16)
				bits %= 129
			}
			pf := netip.PrefixFrom(a, bits).Masked()
			switch {
			case kind&64 != 0:
				cfg.ServerPrefixes = append(cfg.ServerPrefixes, netip.PrefixFrom(a, bits))
			case kind&4 != 0:
				cfg.ServerAddrs = append(cfg.ServerAddrs, a)
			case kind&8 != 0:
				cfg.ClientPrefixes = append(cfg.ClientPrefixes, pf)
			case kind&1 == 0:
				cfg.Allow = append(cfg.Allow, pf)
			default:
				cfg.Deny = append(cfg.Deny, pf)
			}
			cfg.AllowClientToClient = kind&16 != 0
		}
		d, err := NewDestinations(cfg)
		if err != nil {
			t.Fatalf("NewDestinations(%+v) = %v", cfg, err)
		}
		dst, ok := netip.AddrFromSlice(addr)
		if !ok {
			dst = netip.Addr{}
		}
		got := d.Check(dst)
		if again := d.Check(dst); again != got {
			t.Fatalf("Check(%v) = %v, then %v", dst, got, again)
		}
		if want := refCheck(cfg, dst); got != want {
			t.Fatalf("Check(%v) = %v, reference %v (cfg %+v)", dst, got, want, cfg)
		}
		switch {
		case dst.Is4():
			mapped := netip.AddrFrom16(dst.As16())
			if m := d.Check(mapped); m != got {
				t.Fatalf("Check(%v) = %v, Check(%v) = %v", dst, got, mapped, m)
			}
		case dst.Is4In6():
			if u := d.Check(dst.Unmap()); u != got {
				t.Fatalf("Check(%v) = %v, Check(%v) = %v", dst, got, dst.Unmap(), u)
			}
		case dst.Is6():
			if z := d.Check(dst.WithZone("eth0")); z != got {
				t.Fatalf("Check(%v) = %v, with zone %v", dst, got, z)
			}
		}
	})
}
