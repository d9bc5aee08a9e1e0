package tun

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// FuzzParseClaim checks that parseClaim either rejects a claim file or
// returns a claim whose every field is valid (restated here, not by
// calling validate) and that claimFileName and marshalClaim write back to
// the same name and claim.
func FuzzParseClaim(f *testing.F) {
	f.Add("4026531840.3.json", []byte(testClaimJSON))
	f.Add("7.0.json", []byte(`{"pid":1,"instance":"default","state_dir":"/","tun":"masque0","full_tunnel":false,"kill_switch":false}`))
	f.Add("7.15.json", []byte(`{"pid":2147483647,"instance":"a-b_c","state_dir":"/run/masque/a","tun":"mq.0"}`))
	f.Add("7.16.json", []byte(testClaimJSON))
	f.Add("07.3.json", []byte(testClaimJSON))
	f.Add("7.3.json", []byte(`{"pid":42,"instance":"work","state_dir":"/run/../etc","tun":"x"}`))
	f.Add("7.3.json", []byte(`{"pid":-1,"instance":"..","state_dir":"relative","tun":"a/b"}`))
	f.Add("7.3.json", []byte(`{"pid":42,"pid":43,"instance":"work","state_dir":"/a","tun":"x"} `))
	f.Fuzz(func(t *testing.T, name string, b []byte) {
		ns, c, err := parseClaim(name, b)
		if err != nil {
			if c != (Claim{}) {
				t.Fatalf("parseClaim(%q, %q) = %+v, %v: claim with error", name, b, c, err)
			}
			return
		}
		checkClaim(t, name, b, ns, &c)
		if got := claimFileName(ns, c.Slot); got != name {
			t.Errorf("claimFileName(parseClaim(%q)) = %q", name, got)
		}
		b2 := marshalClaim(&c)
		ns2, c2, err := parseClaim(name, b2)
		if err != nil || ns2 != ns || c2 != c {
			t.Fatalf("parseClaim(%q, %q) = %d, %+v, %v; want %d, %+v from %q", name, b2, ns2, c2, err, ns, c, b)
		}
	})
}

var (
	claimNameRE    = regexp.MustCompile(`^[1-9][0-9]*\.(0|[1-9]|1[0-5])\.json$`)
	instanceNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)
)

// checkClaim fails t unless c, parsed from the file name holding b, has
// only valid fields.
func checkClaim(t *testing.T, name string, b []byte, ns uint64, c *Claim) {
	t.Helper()
	if !claimNameRE.MatchString(name) || ns == 0 || c.Slot < 0 || c.Slot > 15 {
		t.Errorf("parseClaim(%q) accepted the name (netns %d, slot %d)", name, ns, c.Slot)
	}
	if c.PID <= 0 {
		t.Errorf("parseClaim(%q, %q) accepted pid %d", name, b, c.PID)
	}
	if !instanceNameRE.MatchString(c.Instance) {
		t.Errorf("parseClaim(%q, %q) accepted instance %q", name, b, c.Instance)
	}
	if !strings.HasPrefix(c.StateDir, "/") || filepath.Clean(c.StateDir) != c.StateDir || strings.ContainsRune(c.StateDir, 0) {
		t.Errorf("parseClaim(%q, %q) accepted state_dir %q", name, b, c.StateDir)
	}
	if c.Tun == "" || len(c.Tun) > 15 || strings.ContainsAny(c.Tun, "/ \x00:") || c.Tun == "." || c.Tun == ".." {
		t.Errorf("parseClaim(%q, %q) accepted tun %q", name, b, c.Tun)
	}
	if c.Alive || c.Leftovers {
		t.Errorf("parseClaim(%q, %q) set Alive or Leftovers: %+v", name, b, c)
	}
}

// FuzzCheckConflicts checks CheckConflicts against its rules restated:
// each byte of live is a claim (bits: alive, leftovers, full tunnel, kill
// switch, then two for one of four instances and two for one of four
// TUNs), want is one more. A conflict must name one of live's claims, its
// reason's rule must hold for that claim, and no rule of an earlier
// reason may hold for any claim; no conflict means no rule holds.
func FuzzCheckConflicts(f *testing.F) {
	f.Add([]byte{}, byte(0x0c))
	f.Add([]byte{0x03, 0x13, 0x23}, byte(0x30))
	f.Add([]byte{0x0f}, byte(0x0c))
	f.Add([]byte{0x02, 0x01}, byte(0x10))
	f.Add([]byte{0x05, 0x09, 0x41}, byte(0xd8))
	f.Fuzz(func(t *testing.T, live []byte, want byte) {
		names := []string{"default", "work", "home", "lab"}
		claim := func(i int, b byte) Claim {
			return Claim{
				Slot: Slot(i % MaxInstances), PID: 100 + i, Instance: names[b>>4&3], StateDir: "/run/masque/" + names[b>>4&3],
				Tun: fmt.Sprintf("masque%d", b>>6), Alive: b&1 != 0, Leftovers: b&2 != 0, FullTunnel: b&4 != 0, KillSwitch: b&8 != 0,
			}
		}
		var claims []Claim
		for i, b := range live {
			claims = append(claims, claim(i, b))
		}
		w := claim(len(live), want)
		rule := func(r ConflictReason, c Claim) bool {
			switch r {
			case ConflictRunning:
				return c.Alive && c.Instance == w.Instance
			case ConflictCrashed:
				return !c.Alive && c.Leftovers && c.Instance != w.Instance
			case ConflictTun:
				return c.Alive && c.Tun == w.Tun
			case ConflictFullTunnel:
				return c.Alive && c.FullTunnel && w.FullTunnel
			case ConflictTheirKillSwitch:
				return c.Alive && c.KillSwitch
			case ConflictOurKillSwitch:
				return c.Alive && w.KillSwitch
			}
			t.Fatalf("unknown reason %v", r)
			return false
		}
		err := CheckConflicts(claims, w)
		last := ConflictOurKillSwitch
		if err != nil {
			ce, ok := errors.AsType[*ConflictError](err)
			if !ok {
				t.Fatalf("CheckConflicts() = %v, not a *ConflictError", err)
			}
			if !rule(ce.Reason, ce.Claim) || ce.Claim.PID < 100 || ce.Claim.PID >= 100+len(claims) || claims[ce.Claim.PID-100] != ce.Claim {
				t.Fatalf("CheckConflicts(%+v, %+v) = %v (%v, %+v): not one of live in the way", claims, w, err, ce.Reason, ce.Claim)
			}
			if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, `"`+ce.Claim.Instance+`"`) {
				t.Errorf("CheckConflicts() = %q: not one line naming instance %q", msg, ce.Claim.Instance)
			}
			last = ce.Reason - 1
		}
		for r := ConflictRunning; r <= last; r++ {
			for _, c := range claims {
				if rule(r, c) {
					t.Fatalf("CheckConflicts(%+v, %+v) = %v, but %+v conflicts (%v)", claims, w, err, c, r)
				}
			}
		}
	})
}
