package tunnel

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseIPPath(t *testing.T) {
	pfx := netip.MustParsePrefix
	tests := []struct {
		path string
		want ipScope
		// wantPath is ipPath(want) when it differs from path.
		wantPath string
	}{
		{path: "/.well-known/masque/ip/*/*/", want: ipScope{}},
		{path: "/.well-known/masque/ip/198.18.0.0%2F15/*/", want: ipScope{target: pfx("198.18.0.0/15")}},
		{path: "/.well-known/masque/ip/198.18.0.0%2f15/*/", want: ipScope{target: pfx("198.18.0.0/15")}, wantPath: "/.well-known/masque/ip/198.18.0.0%2F15/*/"},
		{path: "/.well-known/masque/ip/198.18.0.7/*/", want: ipScope{target: pfx("198.18.0.7/32")}, wantPath: "/.well-known/masque/ip/198.18.0.7%2F32/*/"},
		{path: "/.well-known/masque/ip/0.0.0.0%2F0/*/", want: ipScope{target: pfx("0.0.0.0/0")}},
		{path: "/.well-known/masque/ip/2001:db8::%2F32/*/", want: ipScope{target: pfx("2001:db8::/32")}},
		{path: "/.well-known/masque/ip/2001:db8::1/6/", want: ipScope{target: pfx("2001:db8::1/128"), proto: 6}, wantPath: "/.well-known/masque/ip/2001:db8::1%2F128/6/"},
		{path: "/.well-known/masque/ip/::%2F0/58/", want: ipScope{target: pfx("::/0"), proto: 58}},
		{path: "/.well-known/masque/ip/*/17/", want: ipScope{proto: 17}},
		{path: "/.well-known/masque/ip/*/255/", want: ipScope{proto: 255}},
		{path: "/.well-known/masque/ip/*/1/", want: ipScope{proto: 1}},
		{path: "/.well-known/masque/ip/*/0/", want: ipScope{}, wantPath: "/.well-known/masque/ip/*/*/"}, // 0 is every protocol
		{path: "/.well-known/masque/ip/*/006/", want: ipScope{proto: 6}, wantPath: "/.well-known/masque/ip/*/6/"},
		{path: "/.well-known/masque/ip/%2A/%2A/", want: ipScope{}, wantPath: "/.well-known/masque/ip/*/*/"},
		{path: "/.well-known/masque/ip/::ffff:198.18.0.1/*/", want: ipScope{target: pfx("::ffff:198.18.0.1/128")}, wantPath: "/.well-known/masque/ip/::ffff:198.18.0.1%2F128/*/"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			got, err := parseIPPath(tt.path)
			if err != nil {
				t.Fatalf("parseIPPath(%q) = %v", tt.path, err)
			}
			if got != tt.want {
				t.Fatalf("parseIPPath(%q) = %+v, want %+v", tt.path, got, tt.want)
			}
			wantPath := tt.wantPath
			if wantPath == "" {
				wantPath = tt.path
			}
			if p := ipPath(got); p != wantPath {
				t.Errorf("ipPath(%+v) = %q, want %q", got, p, wantPath)
			}
			if back, err := parseIPPath(ipPath(got)); err != nil || back != got {
				t.Errorf("parseIPPath(ipPath(%+v)) = %+v, %v", got, back, err)
			}
		})
	}
}

func TestParseIPPathErrors(t *testing.T) {
	tests := []struct {
		name, path, wantErr string
	}{
		{"empty", "", "does not start with"},
		{"other prefix", "/.well-known/masque/udp/*/*/", "does not start with"},
		{"prefix only", "/.well-known/masque/ip/", "is not"},
		{"missing ipproto", "/.well-known/masque/ip/*/", "is not"},
		{"missing trailing slash", "/.well-known/masque/ip/*/*", "is not"},
		{"extra segment", "/.well-known/masque/ip/*/*/x/", "is not"},
		{"extra trailing segment", "/.well-known/masque/ip/*/*/x", "is not"},
		{"query-like segment", "/.well-known/masque/ip/*/*/?a", "is not"},
		{"empty target", "/.well-known/masque/ip//*/", "malformed target"},
		{"empty ipproto", "/.well-known/masque/ip/*//", "malformed ipproto"},
		{"bad escape in target", "/.well-known/masque/ip/%zz/*/", "malformed target"},
		{"bad escape in ipproto", "/.well-known/masque/ip/*/%2/", "malformed ipproto"},
		{"target too long", "/.well-known/masque/ip/" + strings.Repeat("a", maxTargetLen+1) + "/*/", "malformed target"},
		{"v4 host bits set", "/.well-known/masque/ip/198.18.0.1%2F15/*/", "host bits"},
		{"v6 host bits set", "/.well-known/masque/ip/2001:db8::1%2F32/*/", "host bits"},
		{"v4 prefix too long", "/.well-known/masque/ip/198.18.0.0%2F33/*/", "not *, an IP address or a prefix"},
		{"zone", "/.well-known/masque/ip/fe80::1%25eth0/*/", "not *, an IP address or a prefix"},
		{"zone in prefix", "/.well-known/masque/ip/fe80::%25eth0%2F64/*/", "not *, an IP address or a prefix"},
		{"hostname", "/.well-known/masque/ip/example.com/*/", "not *, an IP address or a prefix"},
		{"unescaped slash splits", "/.well-known/masque/ip/198.18.0.0/15/*/", "is not"},
		{"proto 256", "/.well-known/masque/ip/*/256/", "ipproto"},
		{"proto negative", "/.well-known/masque/ip/*/-1/", "ipproto"},
		{"proto plus", "/.well-known/masque/ip/*/+6/", "ipproto"},
		{"proto name", "/.well-known/masque/ip/*/tcp/", "ipproto"},
		{"proto hex", "/.well-known/masque/ip/*/0x6/", "ipproto"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseIPPath(tt.path)
			if err == nil {
				t.Fatalf("parseIPPath(%q) = %+v, want error containing %q", tt.path, got, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseIPPath(%q) = %v, want error containing %q", tt.path, err, tt.wantErr)
			}
		})
	}
}

func TestIPScopeAllows(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		name  string
		scope ipScope
		dst   netip.Addr
		proto uint8
		want  bool
	}{
		{"full tunnel", ipScope{}, a("198.18.0.1"), protoUDP, true},
		{"full tunnel v6", ipScope{}, a("2001:db8::1"), protoTCP, true},
		{"inside prefix", ipScope{target: netip.MustParsePrefix("198.18.0.0/24")}, a("198.18.0.9"), protoTCP, true},
		{"outside prefix", ipScope{target: netip.MustParsePrefix("198.18.0.0/24")}, a("198.18.1.9"), protoTCP, false},
		{"other family", ipScope{target: netip.MustParsePrefix("198.18.0.0/24")}, a("2001:db8::1"), protoTCP, false},
		{"protocol matches", ipScope{proto: protoUDP}, a("198.18.0.1"), protoUDP, true},
		{"protocol differs", ipScope{proto: protoUDP}, a("198.18.0.1"), protoTCP, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.scope.allows(tt.dst, tt.proto); got != tt.want {
				t.Errorf("%+v.allows(%v, %d) = %v, want %v", tt.scope, tt.dst, tt.proto, got, tt.want)
			}
		})
	}
	if !(ipScope{}).full() || (ipScope{proto: 1}).full() || (ipScope{target: netip.MustParsePrefix("::/0")}).full() {
		t.Error("full() wrong")
	}
}

func FuzzParseIPPath(f *testing.F) {
	for _, p := range []string{
		"/.well-known/masque/ip/*/*/",
		"/.well-known/masque/ip/198.18.0.0%2F15/17/",
		"/.well-known/masque/ip/2001:db8::1/6/",
		"/.well-known/masque/ip/::ffff:198.18.0.1/*/",
		"/.well-known/masque/ip/fe80::1%25eth0/*/",
		"/.well-known/masque/ip/*/256/",
		"/.well-known/masque/ip/*/*/x/",
	} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, path string) {
		s, err := parseIPPath(path)
		if err != nil {
			return
		}
		if s.target.IsValid() && (s.target != s.target.Masked() || s.target.Addr().Zone() != "") {
			t.Errorf("parseIPPath(%q) target %v is not a masked prefix without zone", path, s.target)
		}
		p := ipPath(s)
		back, err := parseIPPath(p)
		if err != nil {
			t.Fatalf("parseIPPath(ipPath(%+v) = %q) = %v", s, p, err)
		}
		if back != s {
			t.Errorf("parseIPPath(ipPath(%+v)) = %+v", s, back)
		}
		if ipPath(back) != p {
			t.Errorf("ipPath is not stable: %q then %q", p, ipPath(back))
		}
	})
}

// TestRequestURL: a template's host is the :authority and its variables
// are the whole Internet; without one, the well-known path.
func TestRequestURL(t *testing.T) {
	for _, tt := range []struct {
		tmpl, auth, want, wantErr string
	}{
		{"", "vpn.example:443", "https://vpn.example:443/.well-known/masque/ip/*/*/", ""},
		{"https://198.18.1.2:4433/.well-known/masque/ip/{target}/{ipproto}/", "vpn.example:443", "https://198.18.1.2:4433/.well-known/masque/ip/*/*/", ""},
		{"https://proxy.example/vpn{?target,ipproto}", "", "https://proxy.example/vpn?target=*&ipproto=*", ""},
		{"https://proxy.example/fixed", "", "https://proxy.example/fixed", ""},
		{"http://proxy.example/{target}", "", "", "want an https URI with a host"},
		{"https:///{target}", "", "", "want an https URI with a host"},
		{"https://x/{target", "", "", "template"},
	} {
		u, err := requestURL(ClientConfig{Template: tt.tmpl, Authority: tt.auth})
		switch {
		case tt.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("requestURL(%q) = %v, %v, want error %q", tt.tmpl, u, err, tt.wantErr)
			}
		case err != nil || u.String() != tt.want:
			t.Errorf("requestURL(%q) = %v, %v, want %s", tt.tmpl, u, err, tt.want)
		}
	}
}
