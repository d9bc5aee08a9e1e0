package tun

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/masque-vpn/masque/tun/internal/nstest"
)

// TestLocalPrefixes reads the networks of a link in a namespace of
// its own: its addresses' networks, without loopback or link-local.
func TestLocalPrefixes(t *testing.T) {
	nstest.New(t)
	d := createUplink(t) // 198.18.200.1/24, 2001:db8:200::1/64
	got, err := LocalPrefixes("")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"198.18.200.0/24", "2001:db8:200::/64"} {
		if !slices.Contains(got, netip.MustParsePrefix(want)) {
			t.Errorf("LocalPrefixes = %v, want %s among them", got, want)
		}
	}
	for _, p := range got {
		if p.Addr().IsLoopback() || p.Addr().IsLinkLocalUnicast() {
			t.Errorf("LocalPrefixes = %v: has %v", got, p)
		}
	}
	if got, _ := LocalPrefixes(d.Name()); len(got) != 0 {
		t.Errorf("LocalPrefixes(skip the uplink) = %v, want none", got)
	}
}
