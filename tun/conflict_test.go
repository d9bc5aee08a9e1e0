package tun

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// running is a live split-tunnel claim without a kill switch.
func running(slot Slot, pid int, instance, tunName string) Claim {
	return Claim{Slot: slot, PID: pid, Instance: instance, StateDir: "/run/masque/" + instance, Tun: tunName, Alive: true, Leftovers: true}
}

func TestCheckConflicts(t *testing.T) {
	work := running(0, 123, "work", "masque-work")
	fullWork := work
	fullWork.FullTunnel, fullWork.KillSwitch = true, true
	ksWork := work
	ksWork.KillSwitch = true
	fullNoKS := work
	fullNoKS.FullTunnel = true
	crashed := work
	crashed.Alive = false
	gone := crashed
	gone.Leftovers = false
	home := running(1, 456, "home", "masque-home")

	split := Claim{PID: 789, Instance: "lab", StateDir: "/run/masque/lab", Tun: "masque-lab"}
	full := split
	full.FullTunnel, full.KillSwitch = true, true
	fullOff := split
	fullOff.FullTunnel = true
	withKS := split
	withKS.KillSwitch = true
	tests := []struct {
		name   string
		live   []Claim
		want   Claim
		reason ConflictReason // 0: no conflict
		in     Claim          // the claim in the way
		msg    string
	}{
		{name: "nothing running", want: full},
		{name: "split next to split", live: []Claim{work, home}, want: split},
		{name: "dead claim without leftovers", live: []Claim{gone}, want: full},
		{name: "own crash is taken over", live: []Claim{crashed}, want: Claim{PID: 9, Instance: "work", StateDir: "/x", Tun: "masque-work", FullTunnel: true, KillSwitch: true}},
		{name: "same instance", live: []Claim{home, work}, want: Claim{PID: 9, Instance: "work", StateDir: "/x", Tun: "other"},
			reason: ConflictRunning, in: work,
			msg: `masque instance "work" is already running (pid 123, state /run/masque/work)`},
		{name: "crashed instance", live: []Claim{crashed}, want: split, reason: ConflictCrashed, in: crashed,
			msg: `host blocked by a crashed masque up (instance "work"): run masque down work`},
		{name: "crash before other conflicts", live: []Claim{fullWork, func() Claim { c := home; c.Alive = false; return c }()}, want: full,
			reason: ConflictCrashed, msg: `host blocked by a crashed masque up (instance "home"): run masque down home`},
		{name: "same tun", live: []Claim{work}, want: Claim{PID: 9, Instance: "lab", StateDir: "/x", Tun: "masque-work"},
			reason: ConflictTun, in: work,
			msg: `tun masque-work is instance "work"'s (pid 123): give instance "lab" another --tun`},
		{name: "dead claim's tun is free", live: []Claim{gone}, want: Claim{PID: 9, Instance: "lab", StateDir: "/x", Tun: "masque-work"}},
		{name: "two full tunnels", live: []Claim{home, fullNoKS}, want: fullOff, reason: ConflictFullTunnel, in: fullNoKS,
			msg: `instance "work" (pid 123) is a full tunnel already: only one full tunnel at a time; use --route for a split tunnel`},
		{name: "two full tunnels with kill switches", live: []Claim{fullWork}, want: full, reason: ConflictFullTunnel, in: fullWork,
			msg: `instance "work" (pid 123) is a full tunnel already: only one full tunnel at a time; use --route for a split tunnel`},
		{name: "their kill switch", live: []Claim{home, ksWork}, want: split, reason: ConflictTheirKillSwitch, in: ksWork,
			msg: `instance "work" (pid 123) has its kill switch on, which would drop the traffic of instance "lab": run masque down work first`},
		{name: "split next to a full tunnel's kill switch", live: []Claim{fullWork}, want: split, reason: ConflictTheirKillSwitch, in: fullWork},
		{name: "our kill switch", live: []Claim{home}, want: withKS, reason: ConflictOurKillSwitch, in: home,
			msg: `a kill switch of instance "lab" would drop the traffic of instance "home" (pid 456): use --kill-switch=false next to it`},
		{name: "full tunnel without kill switch next to split", live: []Claim{home}, want: fullOff},
		{name: "kill switch next to a dead claim", live: []Claim{gone}, want: withKS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckConflicts(tt.live, tt.want)
			if tt.reason == 0 {
				if err != nil {
					t.Fatalf("CheckConflicts() = %v, want nil", err)
				}
				return
			}
			ce, ok := errors.AsType[*ConflictError](err)
			if !ok {
				t.Fatalf("CheckConflicts() = %v, want a *ConflictError", err)
			}
			if ce.Reason != tt.reason {
				t.Errorf("CheckConflicts() reason = %v, want %v", ce.Reason, tt.reason)
			}
			if tt.in.Instance != "" {
				if diff := cmp.Diff(tt.in, ce.Claim); diff != "" {
					t.Errorf("CheckConflicts() claim (-want +got):\n%s", diff)
				}
			}
			if diff := cmp.Diff(tt.want, ce.Want); diff != "" {
				t.Errorf("CheckConflicts() want (-want +got):\n%s", diff)
			}
			if tt.msg != "" && err.Error() != tt.msg {
				t.Errorf("CheckConflicts() = %q, want %q", err, tt.msg)
			}
		})
	}
}
