package main

import (
	"strings"
	"testing"

	"github.com/masque-vpn/masque/tun"
)

func TestAllowForwardFlag(t *testing.T) {
	f := newUpCmd().Flags().Lookup("allow-forward")
	if f == nil {
		t.Fatal("masque up has no --allow-forward")
	}
	if f.DefValue != "false" {
		t.Errorf("--allow-forward defaults to %s, want false", f.DefValue)
	}
	for _, want := range []string{"behind this one", "masqueraded", "only replies", "cannot open connections", "ip_forward"} {
		if !strings.Contains(f.Usage, want) {
			t.Errorf("--allow-forward help %q lacks %q", f.Usage, want)
		}
	}
}

func TestGatewayTable(t *testing.T) {
	for _, tt := range []struct {
		allowForward, killSwitch bool
		want                     bool
	}{
		{false, false, false},
		{false, true, false},
		{true, true, false}, // the kill switch's table holds the chains
		{true, false, true},
	} {
		c := &upConfig{upOptions: upOptions{allowForward: tt.allowForward}}
		table, ok := gatewayTable(c, tt.killSwitch)
		if ok != tt.want || (ok && table != tun.DefaultGatewayTable) {
			t.Errorf("gatewayTable(allow-forward %v, kill switch %v) = %q, %v, want %v", tt.allowForward, tt.killSwitch, table, ok, tt.want)
		}
	}
	for _, allow := range []bool{false, true} {
		c := &upConfig{upOptions: upOptions{allowForward: allow, tun: "masque0"}}
		if ks := killSwitchConfig(c, 0x4d51); ks.AllowForward != allow {
			t.Errorf("killSwitchConfig(allow-forward %v).AllowForward = %v", allow, ks.AllowForward)
		}
	}
}
