package tun

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSlotNames(t *testing.T) {
	tests := []struct {
		slot       Slot
		want       Routing
		killSwitch string
	}{
		{0, Routing{Table: 0x4d51, FwMark: 0x4d51, RulePriority: 5200}, "masque_killswitch"},
		{1, Routing{Table: 0x4d52, FwMark: 0x4d52, RulePriority: 5202}, "masque_killswitch_1"},
		{3, Routing{Table: 0x4d54, FwMark: 0x4d54, RulePriority: 5206}, "masque_killswitch_3"},
		{15, Routing{Table: 0x4d60, FwMark: 0x4d60, RulePriority: 5230}, "masque_killswitch_15"},
	}
	for _, tt := range tests {
		r := tt.slot.Routing()
		if diff := cmp.Diff(tt.want, r); diff != "" {
			t.Errorf("Slot(%d).Routing() (-want +got):\n%s", tt.slot, diff)
		}
		if got := tt.slot.KillSwitchTable(); got != tt.killSwitch {
			t.Errorf("Slot(%d).KillSwitchTable() = %q, want %q", tt.slot, got, tt.killSwitch)
		}
	}
}

// TestSlotsDisjoint checks that every slot's names are valid and that no
// two slots share a table, mark, rule priority or kill-switch table, and
// that each name maps back to its slot.
func TestSlotsDisjoint(t *testing.T) {
	seen := map[any]Slot{}
	for s := range Slot(MaxInstances) {
		if !s.Valid() {
			t.Errorf("Slot(%d).Valid() = false", s)
		}
		r := s.Routing()
		if err := r.Validate(); err != nil {
			t.Errorf("Slot(%d).Routing().Validate() = %v", s, err)
		}
		if errs := r.validateOwn(s); errs != nil {
			t.Errorf("Slot(%d).Routing().validateOwn(%d) = %v", s, s, errs)
		}
		names := []any{"table", r.Table, "mark", r.FwMark, "prio", r.RulePriority, "prio", r.RulePriority + 1, "nft", s.KillSwitchTable()}
		for i := 0; i < len(names); i += 2 {
			key := [2]any{names[i], names[i+1]}
			if o, ok := seen[key]; ok {
				t.Errorf("slots %d and %d share %s %v", o, s, names[i], names[i+1])
			}
			seen[key] = s
		}
		if got, ok := slotOfTable(r.Table); !ok || got != s {
			t.Errorf("slotOfTable(%d) = %d, %v, want %d", r.Table, got, ok, s)
		}
		if got, ok := slotOfMark(r.FwMark); !ok || got != s {
			t.Errorf("slotOfMark(%#x) = %d, %v, want %d", r.FwMark, got, ok, s)
		}
		if got, ok := slotOfPriority(r.RulePriority); !ok || got != s {
			t.Errorf("slotOfPriority(%d) = %d, %v, want %d", r.RulePriority, got, ok, s)
		}
		if got, ok := slotOfKillSwitchTable(s.KillSwitchTable()); !ok || got != s {
			t.Errorf("slotOfKillSwitchTable(%q) = %d, %v, want %d", s.KillSwitchTable(), got, ok, s)
		}
	}
	for _, s := range []Slot{-1, MaxInstances} {
		if s.Valid() {
			t.Errorf("Slot(%d).Valid() = true", s)
		}
	}
}

func TestSlotOfForeign(t *testing.T) {
	for _, v := range []int{DefaultTable - 1, DefaultTable + MaxInstances, 0, 254} {
		if s, ok := slotOfTable(v); ok {
			t.Errorf("slotOfTable(%d) = %d, true, want false", v, s)
		}
	}
	for _, v := range []uint32{0, DefaultFwMark - 1, DefaultFwMark + MaxInstances, 1<<32 - 1} {
		if s, ok := slotOfMark(v); ok {
			t.Errorf("slotOfMark(%#x) = %d, true, want false", v, s)
		}
	}
	for _, v := range []int{DefaultRulePriority - 2, DefaultRulePriority + 1, DefaultRulePriority + 2*MaxInstances, 32766} {
		if s, ok := slotOfPriority(v); ok {
			t.Errorf("slotOfPriority(%d) = %d, true, want false", v, s)
		}
	}
	for _, v := range []string{"masque_killswitch_0", "masque_killswitch_01", "masque_killswitch_16", "masque_killswitch_-1",
		"masque_killswitch_+1", "masque_killswitch_", "masque_killswitch1", "masqued", "firewalld", ""} {
		if s, ok := slotOfKillSwitchTable(v); ok {
			t.Errorf("slotOfKillSwitchTable(%q) = %d, true, want false", v, s)
		}
	}
}
