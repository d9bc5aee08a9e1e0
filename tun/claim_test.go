package tun

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const testClaimJSON = `{"pid":42,"instance":"work","state_dir":"/run/masque/work","tun":"masque-work","full_tunnel":true,"kill_switch":true}`

func TestParseClaim(t *testing.T) {
	work := Claim{Slot: 3, PID: 42, Instance: "work", StateDir: "/run/masque/work", Tun: "masque-work", FullTunnel: true, KillSwitch: true}
	tests := []struct {
		name    string
		file    string
		in      string
		wantNS  uint64
		want    Claim
		wantErr string // substring; "" means valid
	}{
		{name: "full", file: "4026531840.3.json", in: testClaimJSON, wantNS: 4026531840, want: work},
		{name: "split", file: "7.0.json", in: `{"pid":1,"instance":"default","state_dir":"/","tun":"masque0","full_tunnel":false,"kill_switch":false}`,
			wantNS: 7, want: Claim{PID: 1, Instance: "default", StateDir: "/", Tun: "masque0"}},
		{name: "last slot", file: "7.15.json", in: testClaimJSON, wantNS: 7, want: func() Claim { c := work; c.Slot = 15; return c }()},
		{name: "slot 16", file: "7.16.json", in: testClaimJSON, wantErr: `"7.16.json" is not a claim's name`},
		{name: "slot with a zero", file: "7.03.json", in: testClaimJSON, wantErr: "is not a claim's name"},
		{name: "netns with a zero", file: "07.3.json", in: testClaimJSON, wantErr: "is not a claim's name"},
		{name: "netns zero", file: "0.3.json", in: testClaimJSON, wantErr: "is not a claim's name"},
		{name: "netns too big", file: "18446744073709551616.3.json", in: testClaimJSON, wantErr: "is not a claim's name"},
		{name: "no slot", file: "7.json", in: testClaimJSON, wantErr: "is not a claim's name"},
		{name: "temporary file", file: ".7.3.json.tmp", in: testClaimJSON, wantErr: "is not a claim's name"},
		{name: "empty", file: "7.3.json", in: ``, wantErr: "unexpected EOF"},
		{name: "truncated", file: "7.3.json", in: `{"pid":42,`, wantErr: "unexpected EOF"},
		{name: "unknown field", file: "7.3.json", in: `{"pid":42,"slot":3}`, wantErr: `unknown field "slot"`},
		{name: "trailing data", file: "7.3.json", in: testClaimJSON + `{}`, wantErr: "trailing data after claim"},
		{name: "all problems at once", file: "7.3.json", in: `{"pid":0,"instance":"Work","state_dir":"run/x","tun":""}`,
			wantErr: "pid: 0 not positive\ninstance: \"Work\" is not 1-32 of a-z, 0-9, - and _\nstate_dir: \"run/x\" is not a clean absolute path\ntun: empty interface name"},
		{name: "negative pid", file: "7.3.json", in: `{"pid":-5,"instance":"a","state_dir":"/a","tun":"a"}`, wantErr: "pid: -5 not positive"},
		{name: "instance with a slash", file: "7.3.json", in: `{"pid":5,"instance":"../etc","state_dir":"/a","tun":"a"}`, wantErr: "instance:"},
		{name: "instance too long", file: "7.3.json", in: `{"pid":5,"instance":"` + strings.Repeat("a", 33) + `","state_dir":"/a","tun":"a"}`, wantErr: "instance:"},
		{name: "state dir unclean", file: "7.3.json", in: `{"pid":5,"instance":"a","state_dir":"/run/../etc","tun":"a"}`, wantErr: "state_dir:"},
		{name: "state dir NUL", file: "7.3.json", in: `{"pid":5,"instance":"a","state_dir":"/run\u0000","tun":"a"}`, wantErr: "state_dir: contains NUL"},
		{name: "tun too long", file: "7.3.json", in: `{"pid":5,"instance":"a","state_dir":"/a","tun":"0123456789abcdef"}`, wantErr: "tun:"},
		{name: "too big", file: "7.3.json", in: strings.Repeat(" ", maxClaimSize+1), wantErr: "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns, got, err := parseClaim(tt.file, []byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseClaim(%q, %q) = %v, want error containing %q", tt.file, tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseClaim(%q, %q) = %v", tt.file, tt.in, err)
			}
			if ns != tt.wantNS {
				t.Errorf("parseClaim(%q) netns = %d, want %d", tt.file, ns, tt.wantNS)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("parseClaim(%q, %q) (-want +got):\n%s", tt.file, tt.in, diff)
			}
			// What marshalClaim writes parses back to the same claim.
			name := claimFileName(ns, got.Slot)
			ns2, got2, err := parseClaim(name, marshalClaim(&got))
			if err != nil || ns2 != ns || got2 != got {
				t.Errorf("parseClaim(claimFileName, marshalClaim(c)) = %d, %+v, %v, want %d, %+v", ns2, got2, err, ns, got)
			}
		})
	}
}

func TestValidateClaimPath(t *testing.T) {
	tests := []struct {
		path    string
		slot    Slot
		wantErr string
	}{
		{path: "/run/masque/instances/4026531840.3.json", slot: 3},
		{path: "/tmp/x/instances/7.0.json", slot: 0},
		{path: "/run/masque/instances/7.3.json", slot: 2, wantErr: "is the claim of slot 3, not of the state's slot 2"},
		{path: "/run/masque/7.3.json", slot: 3, wantErr: "is not in a directory named instances"},
		{path: "/etc/instances/passwd", slot: 3, wantErr: "is not named <netns>.<slot>.json"},
		{path: "/run/masque/instances/../instances/7.3.json", slot: 3, wantErr: "is not a clean absolute path"},
		{path: "instances/7.3.json", slot: 3, wantErr: "is not a clean absolute path"},
		{path: "/run/masque/instances/7.3.json/", slot: 3, wantErr: "is not a clean absolute path"},
		{path: "/run/masque/instances/7.3.json\x00", slot: 3, wantErr: "is not a clean absolute path"},
		{path: "/run/masque/instances/", slot: 3, wantErr: "is not a clean absolute path"},
		{path: "/instances", slot: 3, wantErr: "is not in a directory named instances"},
	}
	for _, tt := range tests {
		err := validateClaimPath(tt.path, tt.slot)
		if tt.wantErr == "" {
			if err != nil {
				t.Errorf("validateClaimPath(%q, %d) = %v, want nil", tt.path, tt.slot, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("validateClaimPath(%q, %d) = %v, want error containing %q", tt.path, tt.slot, err, tt.wantErr)
		}
	}
}
