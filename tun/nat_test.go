package tun

import (
	"net/netip"
	"strings"
	"testing"
)

func TestNATValidate(t *testing.T) {
	src := []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")}
	tests := []struct {
		name                   string
		table, egress, tunName string
		sources                []netip.Prefix
		wantErr                []string
	}{
		{name: "egress", table: "masque", egress: "eth0", sources: src},
		{name: "not tun", table: "masque", tunName: "masque0", sources: src},
		{name: "no table", egress: "eth0", sources: src, wantErr: []string{"table: empty table name"}},
		{name: "no interface", table: "masque", sources: src, wantErr: []string{"tun (needed without egress): empty interface name"}},
		{name: "bad egress", table: "masque", egress: "0123456789abcdef", sources: src, wantErr: []string{"egress: interface name"}},
		{name: "no sources", table: "masque", egress: "eth0", wantErr: []string{"sources: none"}},
		{name: "bad source", table: "masque", egress: "eth0", sources: []netip.Prefix{{}}, wantErr: []string{"sources[0]: invalid prefix"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateNAT(tt.table, tt.egress, tt.tunName, tt.sources)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("validateNAT() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("validateNAT() = nil, want error containing %q", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("validateNAT() = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestPrefixMask(t *testing.T) {
	tests := []struct {
		bits, n int
		want    string
	}{
		{0, 4, "\x00\x00\x00\x00"},
		{10, 4, "\xff\xc0\x00\x00"},
		{24, 4, "\xff\xff\xff\x00"},
		{32, 4, "\xff\xff\xff\xff"},
		{65, 16, "\xff\xff\xff\xff\xff\xff\xff\xff\x80\x00\x00\x00\x00\x00\x00\x00"},
	}
	for _, tt := range tests {
		if got := string(prefixMask(tt.bits, tt.n)); got != tt.want {
			t.Errorf("prefixMask(%d, %d) = %x, want %x", tt.bits, tt.n, got, tt.want)
		}
	}
}
