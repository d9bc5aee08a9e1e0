package tun

import (
	"net/netip"
	"strings"
	"testing"
)

func TestRoutingValidate(t *testing.T) {
	v4 := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
	tests := []struct {
		name    string
		r       Routing
		wantErr []string
	}{
		{name: "zero", r: Routing{}},
		{name: "full", r: Routing{Link: "masque0", Routes: v4, Excludes: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}},
		{name: "max priority", r: Routing{Link: "masque0", RulePriority: 32764, Table: 1<<32 - 1}},
		{name: "routes without link", r: Routing{Routes: v4}, wantErr: []string{"link: empty interface name"}},
		{name: "main table", r: Routing{Table: 254}, wantErr: []string{"table: 254 is a reserved table"}},
		{name: "local table", r: Routing{Table: 255}, wantErr: []string{"table: 255 is a reserved table"}},
		{name: "default table", r: Routing{Table: 253}, wantErr: []string{"table: 253 is a reserved table"}},
		{name: "negative table", r: Routing{Table: -1}, wantErr: []string{"table: -1 out of range"}},
		{name: "priority", r: Routing{RulePriority: 32765}, wantErr: []string{"rule_priority: 32765 out of range"}},
		{name: "bad prefixes", r: Routing{Link: "x", Routes: []netip.Prefix{{}}, Excludes: []netip.Prefix{netip.MustParsePrefix("::ffff:0.0.0.0/96")}},
			wantErr: []string{"routes[0]: invalid prefix", "excludes[0]: ::ffff:0.0.0.0/96: IPv4-mapped"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.r.Validate()
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
