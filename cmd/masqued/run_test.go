package main

import (
	"crypto/x509"
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
)

// TestIPNetPrefix: interface addresses keep their prefix length, IPv4 ones
// in either of the forms the net package uses.
func TestIPNetPrefix(t *testing.T) {
	tests := []struct {
		name string
		in   *net.IPNet
		want string // "" means not converted
	}{
		{"ipv4, 4-byte mask", &net.IPNet{IP: net.ParseIP("198.18.2.1"), Mask: net.CIDRMask(24, 32)}, "198.18.2.1/24"},
		{"ipv4, 16-byte mask", &net.IPNet{IP: net.ParseIP("198.18.2.1"), Mask: net.CIDRMask(120, 128)}, "198.18.2.1/24"},
		{"ipv4, 4-byte ip", &net.IPNet{IP: net.ParseIP("127.0.0.1").To4(), Mask: net.CIDRMask(8, 32)}, "127.0.0.1/8"},
		{"ipv6", &net.IPNet{IP: net.ParseIP("2001:db8:2::1"), Mask: net.CIDRMask(64, 128)}, "2001:db8:2::1/64"},
		{"ipv6 host", &net.IPNet{IP: net.ParseIP("::1"), Mask: net.CIDRMask(128, 128)}, "::1/128"},
		{"non-canonical mask", &net.IPNet{IP: net.ParseIP("198.18.2.1"), Mask: net.IPv4Mask(255, 0, 255, 0)}, ""},
		{"bad ip", &net.IPNet{IP: net.IP{1, 2, 3}, Mask: net.CIDRMask(24, 32)}, ""},
		{"ipv4 with a short 16-byte mask", &net.IPNet{IP: net.ParseIP("198.18.2.1"), Mask: net.CIDRMask(64, 128)}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ipNetPrefix(tt.in)
			want, wantOK := netip.Prefix{}, tt.want != ""
			if wantOK {
				want = netip.MustParsePrefix(tt.want)
			}
			if got != want || ok != wantOK {
				t.Errorf("ipNetPrefix(%v) = %v, %v, want %v, %v", tt.in, got, ok, want, wantOK)
			}
		})
	}
}

func TestCertNames(t *testing.T) {
	leaf := &x509.Certificate{
		DNSNames:    []string{"vpn.example", "*.pool.example", "not a name", "a.*.example"},
		IPAddresses: []net.IP{net.IPv4(198, 18, 0, 1), net.ParseIP("2001:db8::1")},
	}
	want := []string{"vpn.example", "*.pool.example", "198.18.0.1", "2001:db8::1"}
	if diff := cmp.Diff(want, certNames(leaf)); diff != "" {
		t.Errorf("certNames mismatch (-want +got):\n%s", diff)
	}
	if got := certNames(nil); got != nil {
		t.Errorf("certNames(nil) = %v, want nil", got)
	}
}

func TestServerNameFlag(t *testing.T) {
	var (
		c    Config
		path string
	)
	cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
	serverFlags(cmd, &c, &path)
	if err := cmd.ParseFlags([]string{"--server-name", "vpn.example", "--server-name", "198.18.0.1"}); err != nil {
		t.Fatal(err)
	}
	file := &Config{ServerNames: []string{"old.example"}}
	mergeFlags(cmd, file, &c)
	if diff := cmp.Diff([]string{"vpn.example", "198.18.0.1"}, file.ServerNames); diff != "" {
		t.Errorf("server_names after flags mismatch (-want +got):\n%s", diff)
	}
}
