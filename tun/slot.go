package tun

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxInstances is the number of client instances that can hold a [Slot]
// at once in one network namespace.
const MaxInstances = 16

// Slot numbers the kernel names of one client instance, so that
// instances side by side never share one: slot i has the routing table
// DefaultTable+i, the fwmark DefaultFwMark+i, the rule priorities
// DefaultRulePriority+2i and +2i+1, and a kill-switch table of its own.
// Slot 0 has the names masque used before instances, so that the state
// files of those runs name slot 0. A slot is valid in [0, MaxInstances);
// which instance holds which is the registry's business ([ClaimSlot]).
type Slot int

// Valid reports whether s is in [0, MaxInstances).
func (s Slot) Valid() bool { return s >= 0 && s < MaxInstances }

// Table is s's routing table.
func (s Slot) Table() int { return DefaultTable + int(s) }

// FwMark is the mark of s's tunnel socket, which s's rules let bypass
// its table.
func (s Slot) FwMark() uint32 { return DefaultFwMark + uint32(s) }

// RulePriority is the priority of s's first rule; the second has
// RulePriority+1.
func (s Slot) RulePriority() int { return DefaultRulePriority + 2*int(s) }

// Routing returns a Routing with s's Table, FwMark and RulePriority set;
// the caller adds Link, Routes and Excludes.
func (s Slot) Routing() Routing {
	return Routing{Table: s.Table(), FwMark: s.FwMark(), RulePriority: s.RulePriority()}
}

// KillSwitchTable is the inet nftables table of s's kill switch:
// [DefaultKillSwitchTable] for slot 0, masque_killswitch_<s> for the
// others.
func (s Slot) KillSwitchTable() string {
	if s == 0 {
		return DefaultKillSwitchTable
	}
	return DefaultKillSwitchTable + "_" + strconv.Itoa(int(s))
}

// GatewayTable is the inet nftables table of s's --allow-forward without
// a kill switch: [DefaultGatewayTable] for slot 0, masque_forward_<s> for
// the others.
func (s Slot) GatewayTable() string {
	if s == 0 {
		return DefaultGatewayTable
	}
	return DefaultGatewayTable + "_" + strconv.Itoa(int(s))
}

// ownTables are the inet nftables tables a state of slot s may name: its
// kill switch, its gateway and the server's NAT.
func (s Slot) ownTables() []string {
	return []string{s.KillSwitchTable(), s.GatewayTable(), DefaultNATTable}
}

// slotOfTable returns the slot whose routing table is t.
func slotOfTable(t int) (Slot, bool) {
	s := Slot(t - DefaultTable)
	return s, t >= DefaultTable && s.Valid()
}

// slotOfMark returns the slot whose fwmark is m.
func slotOfMark(m uint32) (Slot, bool) {
	s := Slot(int64(m) - DefaultFwMark)
	return s, m >= DefaultFwMark && s.Valid()
}

// slotOfPriority returns the slot whose first rule priority is p.
func slotOfPriority(p int) (Slot, bool) {
	d := p - DefaultRulePriority
	s := Slot(d / 2)
	return s, d >= 0 && d%2 == 0 && s.Valid()
}

// slotOfKillSwitchTable returns the slot whose kill-switch table is
// name; only the canonical spelling counts (masque_killswitch_3, not
// masque_killswitch_03 nor masque_killswitch_0).
func slotOfKillSwitchTable(name string) (Slot, bool) {
	if name == DefaultKillSwitchTable {
		return 0, true
	}
	n, ok := strings.CutPrefix(name, DefaultKillSwitchTable+"_")
	if !ok {
		return 0, false
	}
	s, ok := parseSlot(n)
	return s, ok && s != 0
}

// parseSlot parses a slot spelt canonically in decimal: no sign, no
// leading zero, in range.
func parseSlot(v string) (Slot, bool) {
	if v == "" || len(v) > 2 || (len(v) > 1 && v[0] == '0') {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	s := Slot(n)
	return s, err == nil && v[0] != '+' && v[0] != '-' && s.Valid()
}

// slotSuffix says which slot a name belongs to, for error messages: "; it
// is slot 2's" when it is another slot's, "" otherwise.
func slotSuffix(of Slot, ok bool, want Slot) string {
	if !ok || of == want {
		return ""
	}
	return fmt.Sprintf("; it is slot %d's", of)
}
