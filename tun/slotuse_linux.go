package tun

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// slotUse says what of a slot's kernel resources exist in a namespace.
type slotUse struct {
	// leftovers: masque's rules at its priorities, routes in its table
	// or its kill-switch table.
	leftovers bool
	// foreign: rules of another program at its priorities (tailscale
	// puts some at 5210 and 5230).
	foreign bool
}

// slotUsage returns the use of every slot in the calling thread's
// network namespace, from one dump of the rules and routes of each
// address family and of the inet nftables tables.
func slotUsage() (use [MaxInstances]slotUse, err error) {
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := retryDump(func() ([]netlink.Rule, error) { return netlink.RuleList(fam) })
		if err != nil {
			return use, fmt.Errorf("list rules: %w", err)
		}
		for i := range rules {
			p := rules[i].Priority
			if p < DefaultRulePriority {
				continue
			}
			s, ok := slotOfPriority(p - (p-DefaultRulePriority)%2)
			if !ok {
				continue
			}
			r := s.Routing()
			if r.ownsRule(&rules[i]) {
				use[s].leftovers = true
			} else {
				use[s].foreign = true
			}
		}
		routes, err := retryDump(func() ([]netlink.Route, error) {
			return netlink.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return use, fmt.Errorf("list routes: %w", err)
		}
		for _, rt := range routes {
			if s, ok := slotOfTable(rt.Table); ok {
				use[s].leftovers = true
			}
		}
	}
	c, err := nftables.New()
	if err != nil {
		return use, fmt.Errorf("list nft tables: %w", err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return use, fmt.Errorf("list nft tables: %w", err)
	}
	for _, t := range tables {
		if s, ok := slotOfKillSwitchTable(t.Name); ok {
			use[s].leftovers = true
		}
	}
	return use, nil
}

// retryDump calls dump again, a few times, while the kernel reports that
// the dump was interrupted by a change.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	for range 4 {
		v, err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return dump()
}
