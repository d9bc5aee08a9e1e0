package tun

import (
	"net"
	"testing"

	"github.com/google/nftables"
	"github.com/masque-vpn/masque/tun/internal/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// addRule adds a rule at priority prio that looks up table; a masque
// suppress rule when table is the main table.
func addRule(t *testing.T, prio, table int) {
	t.Helper()
	r := netlink.NewRule()
	r.Priority, r.Table = prio, table
	if table == tableMain {
		r.SuppressPrefixlen = 0
	}
	if err := netlink.RuleAdd(r); err != nil {
		t.Fatalf("add rule pref %d lookup %d: %v", prio, table, err)
	}
}

// addThrowRoute adds a throw route for 192.0.2.0/24 to table.
func addThrowRoute(t *testing.T, table int) {
	t.Helper()
	_, dst, _ := net.ParseCIDR("192.0.2.0/24")
	if err := netlink.RouteAdd(&netlink.Route{Dst: dst, Table: table, Type: unix.RTN_THROW}); err != nil {
		t.Fatalf("add throw route to table %d: %v", table, err)
	}
}

// addNFTTable adds an empty inet table called name.
func addNFTTable(t *testing.T, name string) {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	c.AddTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet})
	if err := c.Flush(); err != nil {
		t.Fatalf("add table inet %s: %v", name, err)
	}
}

func TestSlotUsage(t *testing.T) {
	nstest.New(t)
	if use, err := slotUsage(); err != nil || use != [MaxInstances]slotUse{} {
		t.Fatalf("slotUsage() in a fresh namespace = %v, %v, want nothing in use", use, err)
	}
	addRule(t, Slot(1).RulePriority(), tableMain)    // masque's suppress rule
	addRule(t, Slot(2).RulePriority()+1, 0x4d53)     // masque's table rule
	addRule(t, Slot(3).RulePriority(), 100)          // another program's
	addRule(t, Slot(4).RulePriority()+1, 0x4d51)     // slot 0's table at slot 4's priority
	addRule(t, DefaultRulePriority-1, tableMain)     // below every slot
	addRule(t, Slot(MaxInstances).RulePriority(), 0) // above every slot
	addThrowRoute(t, Slot(5).Table())
	addThrowRoute(t, Slot(MaxInstances).Table())
	addNFTTable(t, Slot(6).KillSwitchTable())
	addNFTTable(t, DefaultKillSwitchTable+"_06")
	addNFTTable(t, DefaultNATTable)
	use, err := slotUsage()
	if err != nil {
		t.Fatal(err)
	}
	want := [MaxInstances]slotUse{
		1: {leftovers: true}, 2: {leftovers: true}, 3: {foreign: true}, 4: {foreign: true}, 5: {leftovers: true}, 6: {leftovers: true},
	}
	if use != want {
		t.Errorf("slotUsage() = %+v, want %+v", use, want)
	}
}
