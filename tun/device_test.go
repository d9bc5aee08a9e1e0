package tun

import (
	"net/netip"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr []string // substrings; nil means valid
	}{
		{name: "zero", cfg: Config{}},
		{name: "client", cfg: Config{Name: "masque0", MTU: 1400, Addrs: []netip.Prefix{
			netip.MustParsePrefix("100.64.0.2/32"), netip.MustParsePrefix("fd6d:6173:7175:6500::2/128"),
		}}},
		{name: "server", cfg: Config{Name: "masque0", MTU: 65535, Addrs: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/16")}}},
		{name: "mtu too small", cfg: Config{MTU: 575}, wantErr: []string{"mtu: 575 out of range"}},
		{name: "ipv4-only small mtu", cfg: Config{Name: "masque0", MTU: 1213, Addrs: []netip.Prefix{netip.MustParsePrefix("100.64.0.2/32")}}},
		{name: "mtu too small for ipv6", cfg: Config{MTU: 1279, Addrs: []netip.Prefix{netip.MustParsePrefix("fd00::2/128")}}, wantErr: []string{"mtu: 1279 below 1280"}},
		{name: "mtu too large", cfg: Config{MTU: 65536}, wantErr: []string{"mtu: 65536 out of range"}},
		{name: "name too long", cfg: Config{Name: "0123456789abcdef"}, wantErr: []string{"name: interface name \"0123456789abcdef\" longer than 15"}},
		{name: "name with slash", cfg: Config{Name: "a/b"}, wantErr: []string{"name: invalid interface name"}},
		{name: "name with space", cfg: Config{Name: "a b"}, wantErr: []string{"name: invalid interface name"}},
		{name: "zero prefix", cfg: Config{Addrs: []netip.Prefix{{}}}, wantErr: []string{"addrs[0]: invalid prefix"}},
		{name: "mapped", cfg: Config{Addrs: []netip.Prefix{netip.MustParsePrefix("::ffff:1.2.3.4/128")}}, wantErr: []string{"addrs[0]: ::ffff:1.2.3.4/128: IPv4-mapped"}},
		{name: "duplicate", cfg: Config{Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.0.1/24"), netip.MustParsePrefix("198.18.0.1/32")}}, wantErr: []string{"addrs[1]: duplicate address 198.18.0.1"}},
		{name: "end host forwarding", cfg: Config{Name: "masque0", EndHost: true, AllowForward: true}},
		{name: "forwarding without end host", cfg: Config{Name: "masque0", AllowForward: true}, wantErr: []string{"allow_forward: only with end_host"}},
		{name: "all at once", cfg: Config{Name: "..", MTU: 1, Addrs: []netip.Prefix{{}}}, wantErr: []string{"name:", "mtu:", "addrs[0]:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want error containing %q", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}
