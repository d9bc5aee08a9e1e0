package tun

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzReadState checks that ParseState either rejects its input or
// returns a State that marshals to JSON which parses back to an equal
// State.
func FuzzReadState(f *testing.F) {
	f.Add([]byte(`{"version":1,"pid":7}`))
	f.Add([]byte(`{"version":1,"pid":7,"tun":"masque0","routing":{"link":"masque0","table":100,"fwmark":4660,` +
		`"rule_priority":1000,"routes":["0.0.0.0/0","::/0"],"excludes":["192.0.2.1/24"]},` +
		`"nft_tables":["masque"],"sysctls":{"net/ipv4/ip_forward":"0"}}`))
	f.Add([]byte(`{"version":1,"pid":7,"routing":{},"sysctls":{},"nft_tables":[]}`))
	f.Add([]byte(`{"version":1,"pid":7,"routing":{"table":254}}`))
	f.Add([]byte(`{"version":1,"pid":7,"sysctls":{"../x":"1"}}`))
	f.Add([]byte(`{"version":1,"pid":7,"tun":"masque0","resolved":{"link":"masque0","ifindex":12},` +
		`"resolv_conf":{"path":"/etc/resolv.conf","backup":"/run/masque/resolv.conf.orig"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseState(b)
		if err != nil {
			if s != nil {
				t.Fatalf("ParseState(%q) = %+v, %v: state with error", b, s, err)
			}
			return
		}
		b2, err := json.Marshal(s)
		if err != nil {
			t.Fatalf("json.Marshal(%+v) = %v", s, err)
		}
		s2, err := ParseState(b2)
		if err != nil {
			t.Fatalf("ParseState(%q) = %v; it came from ParseState(%q)", b2, err, b)
		}
		if diff := cmp.Diff(s, s2, stateCmpOpts); diff != "" {
			t.Fatalf("state changed in a JSON round trip of %q (-first +second):\n%s", b, diff)
		}
	})
}
