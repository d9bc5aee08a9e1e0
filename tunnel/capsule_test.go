package tunnel

import (
	"bytes"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

func TestParseAddressAssign(t *testing.T) {
	v4 := []byte{0x00, 4, 100, 64, 0, 2, 32}
	v6 := append(append([]byte{0x05, 6}, netip.MustParseAddr("fd00::2").AsSlice()...), 128)
	for _, tt := range []struct {
		name    string
		in      []byte
		want    []netip.Prefix
		wantErr bool
	}{
		{"empty withdraws", nil, nil, false},
		{"one of each", append(append([]byte{}, v4...), v6...),
			[]netip.Prefix{netip.MustParsePrefix("100.64.0.2/32"), netip.MustParsePrefix("fd00::2/128")}, false},
		{"prefix", []byte{0x00, 4, 10, 1, 0, 0, 16}, []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}, false},
		{"bits past the prefix", []byte{0x00, 4, 10, 1, 0, 1, 16}, nil, true},
		{"prefix length 33", []byte{0x00, 4, 10, 1, 0, 1, 33}, nil, true},
		{"version 5", []byte{0x00, 5, 10, 1, 0, 1, 32}, nil, true},
		{"truncated address", []byte{0x00, 4, 10, 1}, nil, true},
		{"truncated prefix length", []byte{0x00, 4, 10, 1, 0, 1}, nil, true},
		{"truncated request ID", []byte{0x40}, nil, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseAddressAssign(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseAddressAssign(%x) = %v, %v; want error %v", tt.in, got, err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, errMalformedCapsule) {
				t.Fatalf("error %v is not errMalformedCapsule", err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); err == nil && diff != "" {
				t.Fatalf("parseAddressAssign(%x) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func routeBytes(rs ...connectip.IPRoute) []byte {
	var b []byte
	for _, r := range rs {
		v := byte(4)
		if r.StartIP.Is6() {
			v = 6
		}
		b = append(b, v)
		b = append(b, r.StartIP.AsSlice()...)
		b = append(b, r.EndIP.AsSlice()...)
		b = append(b, r.IPProtocol)
	}
	return b
}

func mkRoute(start, end string, proto uint8) connectip.IPRoute {
	return connectip.IPRoute{StartIP: netip.MustParseAddr(start), EndIP: netip.MustParseAddr(end), IPProtocol: proto}
}

func TestParseRouteAdvertisement(t *testing.T) {
	all4 := mkRoute("0.0.0.0", "255.255.255.255", 0)
	all6 := mkRoute("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0)
	for _, tt := range []struct {
		name    string
		in      []connectip.IPRoute
		raw     []byte // used when in is nil
		wantErr bool
	}{
		{"full tunnel", []connectip.IPRoute{all4, all6}, nil, false},
		{"disjoint ranges", []connectip.IPRoute{mkRoute("10.0.0.0", "10.0.0.255", 0), mkRoute("10.0.1.0", "10.0.1.255", 0)}, nil, false},
		{"protocol order", []connectip.IPRoute{mkRoute("10.0.0.0", "10.0.0.255", 6), mkRoute("10.0.0.0", "10.0.0.255", 17)}, nil, false},
		{"IPv6 before IPv4", []connectip.IPRoute{all6, all4}, nil, true},
		{"overlap", []connectip.IPRoute{mkRoute("10.0.0.0", "10.0.1.0", 0), mkRoute("10.0.1.0", "10.0.1.255", 0)}, nil, true},
		{"protocol descending", []connectip.IPRoute{mkRoute("10.0.0.0", "10.0.0.255", 17), mkRoute("10.0.1.0", "10.0.1.255", 6)}, nil, true},
		{"end before start", []connectip.IPRoute{mkRoute("10.0.0.9", "10.0.0.1", 0)}, nil, true},
		{"truncated", nil, routeBytes(all4)[:8], true},
		{"bad version", nil, append([]byte{7}, routeBytes(all4)[1:]...), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.raw
			if tt.in != nil {
				in = routeBytes(tt.in...)
			}
			got, err := parseRouteAdvertisement(in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseRouteAdvertisement = %v, %v; want error %v", got, err, tt.wantErr)
			}
			if err == nil && !cmp.Equal(got, tt.in, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })) {
				t.Fatalf("parseRouteAdvertisement = %v, want %v", got, tt.in)
			}
		})
	}
}

// dnsAssign builds a DNS_ASSIGN value with one configuration: nameservers
// with the given addresses, a domain name and a service parameter, and one
// internal and one search domain.
func dnsAssign(servers ...[]netip.Addr) []byte {
	b := quicvarint.Append(nil, uint64(len(servers)))
	for _, addrs := range servers {
		b = append(b, 0, 1) // priority
		var v4, v6 []netip.Addr
		for _, a := range addrs {
			if a.Is4() {
				v4 = append(v4, a)
			} else {
				v6 = append(v6, a)
			}
		}
		b = quicvarint.Append(b, uint64(len(v4)))
		for _, a := range v4 {
			b = append(b, a.AsSlice()...)
		}
		b = quicvarint.Append(b, uint64(len(v6)))
		for _, a := range v6 {
			b = append(b, a.AsSlice()...)
		}
		b = quicvarint.Append(b, 11)
		b = append(b, "dns.example"...)
		b = quicvarint.Append(b, 6)
		b = append(b, 0, 1, 0, 2, 'h', '2') // alpn=h2
	}
	b = quicvarint.Append(b, 1)
	b = quicvarint.Append(b, 4)
	b = append(b, "corp"...)
	b = quicvarint.Append(b, 1)
	b = quicvarint.Append(b, 7)
	b = append(b, "example"...)
	return b
}

func TestParseDNSAssign(t *testing.T) {
	a4, a6 := netip.MustParseAddr("198.18.0.53"), netip.MustParseAddr("2001:db8::53")
	got, err := parseDNSAssign(dnsAssign([]netip.Addr{a4, a6}, []netip.Addr{netip.MustParseAddr("198.18.0.54")}))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{a4, a6, netip.MustParseAddr("198.18.0.54")}
	if !cmp.Equal(got, want, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })) {
		t.Fatalf("parseDNSAssign = %v, want %v", got, want)
	}
	full := dnsAssign([]netip.Addr{a4})
	for i := range len(full) {
		if _, err := parseDNSAssign(full[:i]); i > 0 && err == nil {
			t.Errorf("parseDNSAssign of the first %d of %d bytes = nil error", i, len(full))
		}
	}
	// A count larger than what follows is refused without allocating it.
	huge := quicvarint.Append(nil, 1<<40)
	if _, err := parseDNSAssign(huge); !errors.Is(err, errMalformedCapsule) {
		t.Errorf("parseDNSAssign(huge count) = %v, want errMalformedCapsule", err)
	}
}

// The capsule parsers take any bytes: a result or errMalformedCapsule,
// never a panic; what they return is well-formed.
func FuzzParseCapsules(f *testing.F) {
	f.Add(byte(1), []byte{0x00, 4, 100, 64, 0, 2, 32})
	f.Add(byte(3), routeBytes(mkRoute("0.0.0.0", "255.255.255.255", 0)))
	f.Add(byte(0), dnsAssign([]netip.Addr{netip.MustParseAddr("198.18.0.53")}))
	f.Add(byte(3), []byte{0x07, 4, 0, 0, 0, 0, 32, 0x08, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 128})
	f.Fuzz(func(t *testing.T, which byte, b []byte) {
		switch which % 4 {
		case 0:
			addrs, err := parseDNSAssign(b)
			if err != nil && !errors.Is(err, errMalformedCapsule) {
				t.Fatalf("error %v is not errMalformedCapsule", err)
			}
			for _, a := range addrs {
				if !a.IsValid() {
					t.Fatal("invalid nameserver address")
				}
			}
		case 1:
			ps, err := parseAddressAssign(b)
			if err != nil && !errors.Is(err, errMalformedCapsule) {
				t.Fatalf("error %v is not errMalformedCapsule", err)
			}
			for _, p := range ps {
				if !p.IsValid() || p.Masked() != p {
					t.Fatalf("assigned %v is not a valid masked prefix", p)
				}
			}
		case 2:
			rs, err := parseRouteAdvertisement(b)
			if err != nil && !errors.Is(err, errMalformedCapsule) {
				t.Fatalf("error %v is not errMalformedCapsule", err)
			}
			for i, r := range rs {
				if r.EndIP.Less(r.StartIP) || (i > 0 && !routeFollows(rs[i-1], r)) {
					t.Fatalf("route %d %v is out of order", i, r)
				}
			}
			if err == nil && !bytes.Equal(routeBytes(rs...), b) {
				t.Fatalf("routes %v do not re-encode to the input", rs)
			}
		case 3:
			es, err := parseAddressRequest(b)
			if err != nil && !errors.Is(err, errMalformedCapsule) {
				t.Fatalf("error %v is not errMalformedCapsule", err)
			}
			if err != nil {
				return
			}
			if len(es) == 0 {
				t.Fatal("ADDRESS_REQUEST accepted without addresses")
			}
			for _, e := range es {
				if e.reqID == 0 || !e.prefix.IsValid() || e.prefix.Masked() != e.prefix {
					t.Fatalf("accepted request %+v", e)
				}
			}
			// What parses re-encodes to a capsule whose value parses
			// to the same (request IDs may shrink to shorter varints).
			enc := appendAddresses(nil, capsuleAddressRequest, es)
			_, n, _ := quicvarint.Parse(enc)
			l, m, _ := quicvarint.Parse(enc[n:])
			again, err := parseAddressRequest(enc[n+m:])
			if err != nil || int(l) != len(enc)-n-m || !slices.Equal(again, es) {
				t.Fatalf("re-encoded request parses to %v, %v; want %v", again, err, es)
			}
		}
	})
}

// The capsules the server writes parse back to what it meant, with the
// parsers the client uses.
func TestCapsuleRoundTrip(t *testing.T) {
	split := func(t *testing.T, b []byte, want http3.CapsuleType) []byte {
		t.Helper()
		typ, n, err := quicvarint.Parse(b)
		if err != nil || http3.CapsuleType(typ) != want {
			t.Fatalf("capsule type %#x (%v), want %#x", typ, err, want)
		}
		l, m, err := quicvarint.Parse(b[n:])
		if err != nil || int(l) != len(b)-n-m {
			t.Fatalf("capsule length %d (%v), want %d", l, err, len(b)-n-m)
		}
		return b[n+m:]
	}
	t.Run("ADDRESS_ASSIGN", func(t *testing.T) {
		es := []addressEntry{
			{0, netip.MustParsePrefix("100.64.0.2/32")},
			{1 << 40, netip.MustParsePrefix("fd00::/64")},
			{7, netip.MustParsePrefix("0.0.0.0/32")},
		}
		got, err := parseAddresses(split(t, appendAddresses(nil, capsuleAddressAssign, es), capsuleAddressAssign))
		if err != nil || !slices.Equal(got, es) {
			t.Fatalf("parseAddresses = %v, %v; want %v", got, err, es)
		}
		if got, err := parseAddresses(split(t, appendAddresses(nil, capsuleAddressAssign, nil), capsuleAddressAssign)); err != nil || len(got) != 0 {
			t.Fatalf("empty assignment parses to %v, %v", got, err)
		}
	})
	t.Run("ROUTE_ADVERTISEMENT", func(t *testing.T) {
		rs := prefixesToRoutes([]netip.Prefix{netip.MustParsePrefix("::/0"), netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("10.0.0.0/8")})
		got, err := parseRouteAdvertisement(split(t, appendRouteAdvertisement(nil, rs), capsuleRouteAdvertisement))
		if err != nil || !slices.Equal(got, rs) {
			t.Fatalf("parseRouteAdvertisement = %v, %v; want %v", got, err, rs)
		}
	})
	t.Run("DNS_ASSIGN", func(t *testing.T) {
		servers := []netip.Addr{netip.MustParseAddr("198.18.0.53"), netip.MustParseAddr("2001:db8::53"), netip.MustParseAddr("198.18.0.54")}
		got, err := parseDNSAssign(split(t, appendDNSAssign(nil, servers), capsuleDNSAssign))
		// IPv4 addresses come first.
		want := []netip.Addr{servers[0], servers[2], servers[1]}
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("parseDNSAssign = %v, %v; want %v", got, err, want)
		}
	})
}
