package tunnel

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/masque-vpn/masque/policy"
)

func TestServerNamesCheck(t *testing.T) {
	names, err := newServerNames([]string{"vpn.example", "Other.Example.", "*.pool.example", "198.18.0.7", "2001:db8::7", "::ffff:198.18.0.8"}, 4433)
	if err != nil {
		t.Fatal(err)
	}
	anyPort, err := newServerNames([]string{"vpn.example"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	local4 := netip.MustParseAddr("198.18.0.1")
	local6 := netip.MustParseAddr("2001:db8::1")
	tests := []struct {
		name      string
		n         *serverNames
		authority string
		local     netip.Addr
		want      error
	}{
		{"name", names, "vpn.example:4433", local4, nil},
		{"name in upper case", names, "VPN.Example:4433", local4, nil},
		{"name with trailing dot", names, "vpn.example.:4433", local4, nil},
		{"configured with case and dot", names, "other.example:4433", local4, nil},
		{"wildcard", names, "a.pool.example:4433", local4, nil},
		{"wildcard in upper case", names, "A.POOL.example:4433", local4, nil},
		{"wildcard is one label", names, "a.b.pool.example:4433", local4, errMisdirected},
		{"wildcard is not its base", names, "pool.example:4433", local4, errMisdirected},
		{"another name", names, "evil.example:4433", local4, errMisdirected},
		{"a suffix of ours", names, "evilvpn.example:4433", local4, errMisdirected},
		{"a subdomain of ours", names, "x.vpn.example:4433", local4, errMisdirected},
		{"our name, another port", names, "vpn.example:443", local4, errMisdirected},
		{"our name, no port (443)", names, "vpn.example", local4, errMisdirected},
		{"our name, empty port (443)", names, "vpn.example:", local4, errMisdirected},
		{"our name, leading zeros", names, "vpn.example:04433", local4, nil},
		{"any port", anyPort, "vpn.example:9", local4, nil},
		{"any port, another name", anyPort, "evil.example:9", local4, errMisdirected},

		{"configured IPv4", names, "198.18.0.7:4433", local4, nil},
		{"configured IPv6", names, "[2001:db8::7]:4433", local4, nil},
		{"configured IPv6 other spelling", names, "[2001:DB8:0::0:7]:4433", local4, nil},
		{"configured mapped, asked as IPv4", names, "198.18.0.8:4433", local4, nil},
		{"configured IPv4, asked mapped", names, "[::ffff:198.18.0.7]:4433", local4, nil},
		{"local IPv4", names, "198.18.0.1:4433", local4, nil},
		{"local IPv6", names, "[2001:db8::1]:4433", local6, nil},
		{"local IPv6 with zone", names, "[2001:db8::1%25eth0]:4433", local6, nil},
		{"local IPv6, raw zone", names, "[2001:db8::1%eth0]:4433", local6, nil},
		{"local mapped", names, "198.18.0.1:4433", netip.MustParseAddr("::ffff:198.18.0.1"), nil},
		{"local with zone", names, "[fe80::1]:4433", netip.MustParseAddr("fe80::1%eth0"), nil},
		{"local, another port", names, "198.18.0.1:1", local4, errMisdirected},
		{"another address", names, "198.18.0.2:4433", local4, errMisdirected},
		{"another address, no local", names, "198.18.0.1:4433", netip.Addr{}, errMisdirected},
		{"unspecified local", names, "0.0.0.0:4433", netip.IPv4Unspecified(), errMisdirected},
		{"unspecified local IPv6", names, "[::]:4433", netip.IPv6Unspecified(), errMisdirected},
		{"address for name", names, "198.18.0.1.nip.example:4433", local4, errMisdirected},

		{"empty", names, "", local4, errBadAuthority},
		{"only a port", names, ":4433", local4, errBadAuthority},
		{"IPv6 without brackets", names, "2001:db8::1", local6, errBadAuthority},
		{"IPv6 without brackets, port", names, "2001:db8::1:4433", local6, errBadAuthority},
		{"IPv4 in brackets", names, "[198.18.0.1]:4433", local4, errBadAuthority},
		{"unclosed bracket", names, "[2001:db8::1:4433", local6, errBadAuthority},
		{"junk after bracket", names, "[2001:db8::1]x4433", local6, errBadAuthority},
		{"name in brackets", names, "[vpn.example]:4433", local4, errBadAuthority},
		{"port not a number", names, "vpn.example:https", local4, errBadAuthority},
		{"port signed", names, "vpn.example:+4433", local4, errBadAuthority},
		{"port too big", names, "vpn.example:70000", local4, errBadAuthority},
		{"port 0", names, "vpn.example:0", local4, errBadAuthority},
		{"userinfo", names, "user@vpn.example:4433", local4, errBadAuthority},
		{"bad label", names, "vpn..example:4433", local4, errBadAuthority},
		{"IPv4 with zone", names, "198.18.0.1%eth0:4433", local4, errBadAuthority},
		{"IPv4 with leading zeros", names, "198.018.0.1:4433", local4, errBadAuthority},
		{"all-digit name", names, "1234:4433", local4, errBadAuthority},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.n.check(tt.authority, tt.local); !errors.Is(got, tt.want) || (got == nil) != (tt.want == nil) {
				t.Errorf("check(%q, %v) = %v, want %v", tt.authority, tt.local, got, tt.want)
			}
		})
	}
}

func TestNewServerNamesErrors(t *testing.T) {
	_, err := newServerNames([]string{"vpn.example", "bad name", "fe80::1%eth0", "*", "*.*.example", "a.*.example", "[2001:db8::1]", "vpn.example:443"}, 0)
	if err == nil {
		t.Fatal("newServerNames accepted bad names")
	}
	for _, want := range []string{"names[1]", "names[2]", "names[3]", "names[4]", "names[5]", "names[6]", "names[7]"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "names[0]") {
		t.Errorf("error %q names the good name", err)
	}
}

func TestRequestStatus(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{errMisdirected, 421},
		{errBadAuthority, 400},
		{policy.ErrDuplicateAuth, 400},
		{policy.ErrIdentityMismatch, 401},
		{policy.ErrBadToken, 401},
		{policy.ErrMalformedAuth, 401},
		{policy.ErrNoCredentials, 401},
	}
	for _, tt := range tests {
		if got := requestStatus(tt.err); got != tt.want {
			t.Errorf("requestStatus(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

// FuzzServerNamesCheck checks the :authority matcher on arbitrary input:
// it never panics and answers nil, errBadAuthority or errMisdirected; what
// it accepts names one of our names or addresses on our port, and is
// accepted again when written in canonical form (lower case, IPv6 in
// brackets, port spelled out); the parsed host survives a round trip.
func FuzzServerNamesCheck(f *testing.F) {
	for _, s := range []string{
		"vpn.example:4433", "VPN.example.:4433", "a.pool.example:4433", "198.18.0.1:4433",
		"[2001:db8::1%25eth0]:4433", "[::ffff:198.18.0.7]:4433", "evil.example:4433", "vpn.example",
		"2001:db8::1", "[198.18.0.1]:4433", "vpn.example:0", "[", "]:", "%", "a:b:c",
	} {
		f.Add(s, "198.18.0.1")
		f.Add(s, "2001:db8::1")
	}
	names, err := newServerNames([]string{"vpn.example", "*.pool.example", "198.18.0.7", "2001:db8::7"}, 4433)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, authority, local string) {
		la, _ := netip.ParseAddr(local)
		err := names.check(authority, la)
		if err != nil && !errors.Is(err, errBadAuthority) && !errors.Is(err, errMisdirected) {
			t.Fatalf("check(%q, %q) = %v, want nil, errBadAuthority or errMisdirected", authority, local, err)
		}
		name, addr, port, ok := parseAuthority(authority)
		if ok != !errors.Is(err, errBadAuthority) {
			t.Fatalf("check(%q) = %v but parseAuthority ok = %v", authority, err, ok)
		}
		if !ok {
			return
		}
		if addr.IsValid() == (name != "") || port == 0 {
			t.Fatalf("parseAuthority(%q) = %q, %v, %d: want a name or an address and a port", authority, name, addr, port)
		}
		if addr.IsValid() && (addr.Is4In6() || addr.Zone() != "") {
			t.Fatalf("parseAuthority(%q) = address %v, not canonical", authority, addr)
		}
		if name != "" && (name != strings.ToLower(name) || strings.HasSuffix(name, ".") || !policy.ValidHostName(name)) {
			t.Fatalf("parseAuthority(%q) = name %q, not canonical", authority, name)
		}
		host := name
		if addr.IsValid() {
			host = addr.String()
			if addr.Is6() {
				host = "[" + host + "]"
			}
		}
		canon := host + ":" + strconv.Itoa(int(port))
		if n2, a2, p2, ok2 := parseAuthority(canon); !ok2 || n2 != name || a2 != addr || p2 != port {
			t.Fatalf("parseAuthority(%q) = %q, %v, %d, %v; from %q: %q, %v, %d", canon, n2, a2, p2, ok2, authority, name, addr, port)
		}
		if err2 := names.check(canon, la); (err2 == nil) != (err == nil) {
			t.Fatalf("check(%q) = %v but check(%q) = %v", authority, err, canon, err2)
		}
		if err != nil {
			return
		}
		if port != 4433 {
			t.Fatalf("check(%q) accepted port %d", authority, port)
		}
		_, isName := names.names[name]
		_, isAddr := names.addrs[addr]
		_, rest, _ := strings.Cut(name, ".")
		_, isWild := names.wildcards[rest]
		isLocal := addr.IsValid() && addr == la.Unmap().WithZone("") && !addr.IsUnspecified()
		if !isName && !isAddr && !isWild && !isLocal {
			t.Fatalf("check(%q, %q) accepted a host that is not ours", authority, local)
		}
	})
}
