package localaddr

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	addrs := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	tests := []struct {
		name    string
		in      string
		want    []netip.Addr
		wantErr string
	}{
		{name: "empty", in: "", want: addrs("0.0.0.0")},
		{name: "one", in: "198.18.1.1", want: addrs("198.18.1.1")},
		{name: "list", in: "198.18.1.1,2001:db8::1", want: addrs("198.18.1.1", "2001:db8::1")},
		{name: "range", in: "198.18.1.254-198.18.2.1", want: addrs("198.18.1.254", "198.18.1.255", "198.18.2.0", "198.18.2.1")},
		{name: "range and one", in: "198.18.1.1-198.18.1.2,198.18.1.9", want: addrs("198.18.1.1", "198.18.1.2", "198.18.1.9")},
		{name: "backwards", in: "198.18.1.2-198.18.1.1", wantErr: "bad range"},
		{name: "mixed families", in: "198.18.1.1-2001:db8::1", wantErr: "bad range"},
		{name: "garbage", in: "198.18.1", wantErr: "-local"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q) error = %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("Parse(%q) mismatch (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestParseBounded(t *testing.T) {
	got, err := Parse("2001:db8::-2001:db8::ffff:ffff")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != Max {
		t.Errorf("len(Parse(a /96)) = %d, want the cap %d", len(got), Max)
	}
}
