package policy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParseUDPPattern(t *testing.T) {
	tests := []struct {
		name, in string
		want     string // canonical form; "" with wantErr
		wantErr  string
	}{
		{name: "any", in: "*:*", want: "*:*"},
		{name: "name", in: "DNS.Example.:53", want: "dns.example:53"},
		{name: "wildcard", in: "*.example:1000-2000", want: "*.example:1000-2000"},
		{name: "full range is star", in: "*:1-65535", want: "*:*"},
		{name: "ipv4", in: "198.18.2.2:7", want: "198.18.2.2:7"},
		{name: "ipv4 prefix", in: "198.18.2.0/24:*", want: "198.18.2.0/24:*"},
		{name: "ipv4 host prefix", in: "198.18.2.2/32:7", want: "198.18.2.2:7"},
		{name: "ipv6", in: "[2001:db8::1]:443", want: "[2001:db8::1]:443"},
		{name: "ipv6 prefix", in: "[2001:db8::/32]:443", want: "[2001:db8::/32]:443"},
		{name: "mapped is ipv4", in: "[::ffff:198.18.2.0/120]:7", want: "198.18.2.0/24:7"},
		{name: "single port range", in: "a.example:9-9", want: "a.example:9"},
		{name: "underscore", in: "_dns.example:53", want: "_dns.example:53"},

		{name: "no port", in: "example", wantErr: "want HOST:PORT"},
		{name: "ipv6 without port", in: "[2001:db8::1]", wantErr: "want HOST:PORT"},
		{name: "empty port", in: "example:", wantErr: "port"},
		{name: "port 0", in: "example:0", wantErr: "port"},
		{name: "port too big", in: "example:65536", wantErr: "port"},
		{name: "leading zero", in: "example:053", wantErr: "port"},
		{name: "reversed range", in: "example:20-10", wantErr: "port"},
		{name: "signed", in: "example:+53", wantErr: "port"},
		{name: "bare ipv6", in: "2001:db8::1:53", wantErr: "brackets"},
		{name: "unterminated", in: "[2001:db8::1:53", wantErr: "unterminated"},
		{name: "ipv4 in brackets", in: "[198.18.2.2]:53", wantErr: "not an IPv6"},
		{name: "host bits", in: "198.18.2.1/24:53", wantErr: "not an IPv4"},
		{name: "bad ipv4", in: "198.18.2.256:53", wantErr: "not an IPv4"},
		{name: "zone", in: "[fe80::1%eth0]:53", wantErr: "not an IPv6"},
		{name: "empty host", in: ":53", wantErr: "not *"},
		{name: "bad name", in: "a..b:53", wantErr: "not *"},
		{name: "hyphen start", in: "-a.example:53", wantErr: "not *"},
		{name: "wildcard inside", in: "a.*.example:53", wantErr: "not *"},
		{name: "bare wildcard dot", in: "*.:53", wantErr: "not *"},
		{name: "numeric tld", in: "a.123:53", wantErr: "not *"},
		{name: "long name", in: strings.Repeat("a.", 127) + "ab:53", wantErr: "not *"},
		{name: "long label", in: strings.Repeat("a", 64) + ".example:53", wantErr: "not *"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParseUDPPattern(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseUDPPattern(%q) = %v, %v; want error containing %q", tt.in, p, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseUDPPattern(%q) = %v", tt.in, err)
			}
			if got := p.String(); got != tt.want {
				t.Errorf("ParseUDPPattern(%q).String() = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestUDPPatternMatches(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		pattern string
		name    string
		addr    netip.Addr
		port    uint16
		want    bool
	}{
		{"*:*", "", a("198.18.2.2"), 1, true},
		{"*:53", "x.example", a("198.18.2.2"), 54, false},
		{"dns.example:53", "DNS.example.", a("198.18.2.2"), 53, true},
		{"dns.example:53", "dns.example", a("198.18.2.2"), 5353, false},
		{"dns.example:53", "", a("198.18.2.2"), 53, false}, // IP literal target
		{"dns.example:53", "xdns.example", a("198.18.2.2"), 53, false},
		{"*.example:*", "a.b.example", a("198.18.2.2"), 9, true},
		{"*.example:*", "example", a("198.18.2.2"), 9, false},
		{"*.example:*", "aexample", a("198.18.2.2"), 9, false},
		{"*.example:*", "A.EXAMPLE.", a("198.18.2.2"), 9, true},
		{"198.18.2.0/24:1000-2000", "", a("198.18.2.9"), 1500, true},
		{"198.18.2.0/24:1000-2000", "any.example", a("198.18.2.9"), 2000, true}, // resolved address decides
		{"198.18.2.0/24:1000-2000", "", a("198.18.3.9"), 1500, false},
		{"198.18.2.0/24:1000-2000", "", a("::ffff:198.18.2.9"), 1500, true},
		{"198.18.2.0/24:1000-2000", "", a("198.18.2.9"), 999, false},
		{"[2001:db8::/32]:*", "", a("2001:db8::5"), 53, true},
		{"[2001:db8::/32]:*", "", a("2001:db8::5%eth0"), 53, true},
		{"[2001:db8::/32]:*", "", a("198.18.2.2"), 53, false},
		{"[2001:db8::/32]:*", "", netip.Addr{}, 53, false},
	}
	for _, tt := range tests {
		p, err := ParseUDPPattern(tt.pattern)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.Matches(tt.name, tt.addr, tt.port); got != tt.want {
			t.Errorf("%s.Matches(%q, %v, %d) = %v, want %v", tt.pattern, tt.name, tt.addr, tt.port, got, tt.want)
		}
	}
	if (UDPPattern{}).Matches("x.example", a("198.18.2.2"), 53) {
		t.Errorf("zero UDPPattern matches")
	}
}

func TestUDPPatternMatchesAllocs(t *testing.T) {
	p, _ := ParseUDPPattern("*.example:*")
	addr := netip.MustParseAddr("198.18.2.2")
	if n := testing.AllocsPerRun(100, func() { p.Matches("A.b.Example.", addr, 53) }); n != 0 {
		t.Errorf("Matches allocates %v times per call, want 0", n)
	}
}

func TestNewUDPRules(t *testing.T) {
	r, err := NewUDPRules(UDPRulesConfig{
		Allow: map[string][]string{
			"alice": {"198.18.2.2:7", "dns.example:53"},
			"bob":   {},
			"*":     {"*.example:*"},
			// A certificate's identity alone is its own namespace.
			"cert:laptop": {"198.18.2.2:9"},
		},
		Anonymous: []string{"198.18.2.2:8443"},
	})
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr("198.18.2.2")
	tests := []struct {
		id         Identity
		name       string
		port       uint16
		want, rest bool
	}{
		{"alice", "", 7, true, true},
		{"alice", "dns.example", 53, true, true},
		{"alice", "x.example", 53, false, true}, // own entry, not "*"
		{"bob", "", 7, false, true},             // empty list: nothing
		{"carol", "x.example", 9, true, true},   // "*"
		{"carol", "", 7, false, true},
		{"cert:laptop", "", 9, true, true},
		{"cert:laptop", "x.example", 7, false, true}, // own entry, not "*"
		{"laptop", "x.example", 9, true, true},       // a token's laptop is not the certificate's
	}
	for _, tt := range tests {
		l, restricted := r.For(tt.id)
		if restricted != tt.rest || l.Allows(tt.name, a, tt.port) != tt.want {
			t.Errorf("For(%q) = %v restricted %v; Allows(%q, %v, %d) = %v, want %v restricted %v",
				tt.id, l, restricted, tt.name, a, tt.port, l.Allows(tt.name, a, tt.port), tt.want, tt.rest)
		}
	}
	anon, ok := r.Anonymous()
	if !ok || !anon.Allows("", a, 8443) || anon.Allows("", a, 7) {
		t.Errorf("Anonymous() = %v, %v; want exactly 198.18.2.2:8443", anon, ok)
	}

	open, err := NewUDPRules(UDPRulesConfig{Allow: map[string][]string{"alice": {"*:53"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, restricted := open.For("carol"); restricted {
		t.Errorf("without a %q entry, carol is restricted", AnyIdentity)
	}
	if _, ok := open.Anonymous(); ok {
		t.Errorf("anonymous accepted without Anonymous patterns")
	}
	var none *UDPRules
	if _, restricted := none.For("alice"); restricted {
		t.Errorf("nil UDPRules restricts")
	}
}

func TestNewUDPRulesErrors(t *testing.T) {
	_, err := NewUDPRules(UDPRulesConfig{
		Allow: map[string][]string{
			"bad identity!": {"*:*"},
			"alice":         {"*:*", "x:0"},
			"cert:":         {"*:*"},
			"cert:a:b":      {"*:*"},
			"token:alice":   {"*:*"},
		},
		Anonymous: []string{"nope"},
	})
	if err == nil {
		t.Fatal("NewUDPRules accepted bad patterns")
	}
	for _, want := range []string{`allow["bad identity!"]`, `allow["alice"][1]`, `allow["cert:"]`, `allow["cert:a:b"]`, `allow["token:alice"]`, `anonymous[0]`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestValidHostName(t *testing.T) {
	tests := map[string]bool{
		"example.com":                        true,
		"a":                                  true,
		"xn--bcher-kva.example":              true,
		"_sip._udp.example":                  true,
		"1.2.3.example":                      true,
		"":                                   false,
		"example.com.":                       false, // callers strip the root dot
		"a..b":                               false,
		"-a.example":                         false,
		"a-.example":                         false,
		"a b.example":                        false,
		"1.2.3.4":                            false,
		"123":                                false,
		"a%2fb":                              false,
		strings.Repeat("a", 63) + ".x":       true,
		strings.Repeat("a", 64) + ".x":       false,
		strings.Repeat("abcd.", 50) + "xyz":  true,  // 253 characters
		strings.Repeat("abcd.", 50) + "wxyz": false, // 254
	}
	for in, want := range tests {
		if got := ValidHostName(in); got != want {
			t.Errorf("ValidHostName(%q) = %v, want %v", in, got, want)
		}
	}
}

// FuzzParseUDPPattern checks that every pattern the parser accepts has a
// canonical form that parses back to the same pattern, and that a
// pattern matches what its own kind says it matches.
func FuzzParseUDPPattern(f *testing.F) {
	for _, s := range []string{"*:*", "dns.example:53", "*.example:1000-2000", "198.18.2.0/24:*",
		"[2001:db8::/32]:443", "[::ffff:1.2.3.4]:9", "a:1", "0.0.0.0/0:65535", "[::]:*"} {
		f.Add(s, "x.example", []byte{198, 18, 2, 2}, uint16(53))
	}
	f.Fuzz(func(t *testing.T, s, name string, addr []byte, port uint16) {
		p, err := ParseUDPPattern(s)
		if err != nil {
			return
		}
		c := p.String()
		q, err := ParseUDPPattern(c)
		if err != nil {
			t.Fatalf("ParseUDPPattern(%q) ok, but its String %q does not parse: %v", s, c, err)
		}
		if q != p {
			t.Fatalf("ParseUDPPattern(%q) = %#v, String %q parses to %#v", s, p, c, q)
		}
		if q.String() != c {
			t.Fatalf("String not canonical: %q then %q", c, q.String())
		}
		a, _ := netip.AddrFromSlice(addr)
		m := p.Matches(name, a, port)
		if m && (port < p.lo || port > p.hi) {
			t.Fatalf("%s matches port %d", c, port)
		}
		if m && (p.kind == udpName || p.kind == udpSuffix) && strings.TrimSuffix(name, ".") == "" {
			t.Fatalf("name pattern %s matches an IP literal target", c)
		}
		if m && p.kind == udpPrefix && !p.prefix.Contains(a.Unmap().WithZone("")) {
			t.Fatalf("%s matches %v outside its prefix", c, a)
		}
	})
}

// FuzzUDPRules checks the decisions of any rules on any target: an
// identity gets its own list, else the "*" list, else no restriction; the
// check before resolution (MayAllow) never refuses a named target that
// the check after it (Allows) would let through; and what Allows lets
// through, one of the list's patterns matches.
func FuzzUDPRules(f *testing.F) {
	f.Add("*.example:53\n198.18.2.0/24:*", "dns.example:53", "alice", "alice", "ns.example", []byte{198, 18, 2, 2}, uint16(53))
	f.Add("a.example:1-100", "*:*", "bob", "carol", "", []byte{127, 0, 0, 1}, uint16(80))
	f.Add("[2001:db8::/32]:443", "", "alice", "alice", "x.example", []byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, uint16(443))
	f.Add("", "x:1", "erin", "dave", "X.", []byte{}, uint16(1))
	f.Fuzz(func(t *testing.T, own, any, id, asker, name string, addr []byte, port uint16) {
		split := func(s string) []string {
			if s == "" {
				return nil
			}
			return strings.Split(s, "\n")
		}
		if id == AnyIdentity {
			return // the * list is any's
		}
		cfg := UDPRulesConfig{Allow: map[string][]string{id: split(own)}}
		if any != "" {
			cfg.Allow[AnyIdentity] = split(any)
		}
		r, err := NewUDPRules(cfg)
		if err != nil {
			return
		}
		l, restricted := r.For(Identity(asker))
		ownList, _ := ParseUDPAllowList(split(own))
		anyList, _ := ParseUDPAllowList(split(any))
		switch {
		case asker == id:
			if !restricted || len(l) != len(ownList) {
				t.Fatalf("For(%q) = %v, %v; want its own list %v", asker, l, restricted, ownList)
			}
		case any != "":
			if !restricted || len(l) != len(anyList) {
				t.Fatalf("For(%q) = %v, %v; want the * list %v", asker, l, restricted, anyList)
			}
		case restricted:
			t.Fatalf("For(%q) restricted without a list for it or *", asker)
		}
		if _, ok := r.Anonymous(); ok {
			t.Fatal("anonymous requests accepted without an anonymous list")
		}
		a, _ := netip.AddrFromSlice(addr)
		if l.Allows(name, a, port) {
			if strings.TrimSuffix(name, ".") != "" && !l.MayAllow(name, port) {
				t.Fatalf("%v allows %q %v:%d after resolution but refuses it before", l, name, a, port)
			}
			if !slices.ContainsFunc(l, func(p UDPPattern) bool { return p.Matches(name, a, port) }) {
				t.Fatalf("%v allows %q %v:%d, but no pattern matches", l, name, a, port)
			}
		}
	})
}
