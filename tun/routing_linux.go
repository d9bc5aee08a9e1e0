package tun

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Apply installs, for each address family that has at least one route,
// the two rules that Routing describes, the routes of that family into
// Link and its excludes as throw routes, all in Table. Routes go in
// first, so that the rules never point at a half-built table.
//
// Apply may be called again with the same Routing: routes are replaced
// and rules that already exist are kept. On error it removes again what it
// added (routes it replaced stay).
func (r *Routing) Apply() (err error) {
	if err := r.Validate(); err != nil {
		return fmt.Errorf("apply routing: %w", err)
	}
	if len(r.Routes) == 0 {
		return nil
	}
	link, err := netlink.LinkByName(r.Link)
	if err != nil {
		return fmt.Errorf("apply routing: look up link %s: %w", r.Link, err)
	}

	var undo []func() error
	defer func() {
		if err == nil {
			return
		}
		errs := []error{err}
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](); uerr != nil {
				errs = append(errs, fmt.Errorf("undo: %w", uerr))
			}
		}
		err = fmt.Errorf("apply routing: %w", errors.Join(errs...))
	}()

	fams := make(map[int]bool, 2)
	for _, p := range r.Routes {
		fams[family(p)] = true
		rt := &netlink.Route{
			LinkIndex: link.Attrs().Index,
			Dst:       prefixIPNet(p.Masked()),
			Table:     r.table(),
		}
		if p.Addr().Is4() {
			// Like "ip route add ... dev X": a route to a device without
			// a gateway has link scope.
			rt.Scope = netlink.SCOPE_LINK
		}
		added, err := addRoute(rt)
		if err != nil {
			return fmt.Errorf("add route %v dev %s table %d: %w", p, r.Link, r.table(), err)
		}
		if added {
			undo = append(undo, func() error { return delRoute(rt) })
		}
	}
	for _, p := range r.Excludes {
		if !fams[family(p)] {
			continue
		}
		rt := &netlink.Route{
			Dst:   prefixIPNet(p.Masked()),
			Table: r.table(),
			Type:  unix.RTN_THROW,
		}
		added, err := addRoute(rt)
		if err != nil {
			return fmt.Errorf("add route throw %v table %d: %w", p, r.table(), err)
		}
		if added {
			undo = append(undo, func() error { return delRoute(rt) })
		}
	}
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		if !fams[fam] {
			continue
		}
		existing, err := netlink.RuleList(fam)
		if err != nil {
			return fmt.Errorf("list rules: %w", err)
		}
		for _, rule := range r.rules(fam) {
			if hasRule(existing, rule) {
				continue
			}
			if err := netlink.RuleAdd(rule); err != nil {
				return fmt.Errorf("add rule %s: %w", describeRule(rule), err)
			}
			undo = append(undo, func() error { return delRule(rule) })
		}
	}
	return nil
}

// Remove deletes what Apply adds: in both address families the rules at
// RulePriority that look up the main table with suppress_prefixlength 0,
// the rules at RulePriority+1 that look up Table, and every route in
// Table. What is already gone is no error, so Remove is idempotent. Link,
// Routes and Excludes are not needed.
func (r *Routing) Remove() error {
	if err := errors.Join(r.validateIDs()...); err != nil {
		return fmt.Errorf("remove routing: %w", err)
	}
	var errs []error
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := netlink.RuleList(fam)
		if err != nil {
			errs = append(errs, fmt.Errorf("list rules: %w", err))
		}
		for i := range rules {
			if r.ownsRule(&rules[i]) {
				if err := delRule(&rules[i]); err != nil {
					errs = append(errs, err)
				}
			}
		}
		routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: r.table()}, netlink.RT_FILTER_TABLE)
		if err != nil {
			errs = append(errs, fmt.Errorf("list routes in table %d: %w", r.table(), err))
		}
		for i := range routes {
			if err := delRoute(&routes[i]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove routing: %w", err)
	}
	return nil
}

// installed counts, in both address families, the rules that Remove
// would delete and the routes in Table.
func (r *Routing) installed() (rules, routes int, err error) {
	if err := errors.Join(r.validateIDs()...); err != nil {
		return 0, 0, err
	}
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rs, err := netlink.RuleList(fam)
		if err != nil {
			return 0, 0, fmt.Errorf("list rules: %w", err)
		}
		for i := range rs {
			if r.ownsRule(&rs[i]) {
				rules++
			}
		}
		rts, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: r.table()}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return 0, 0, fmt.Errorf("list routes in table %d: %w", r.table(), err)
		}
		routes += len(rts)
	}
	return rules, routes, nil
}

// rules returns the rules of family fam that Apply installs.
func (r *Routing) rules(fam int) []*netlink.Rule {
	suppress := netlink.NewRule()
	suppress.Family = fam
	suppress.Priority = r.priority()
	suppress.Table = tableMain
	suppress.SuppressPrefixlen = 0

	mark := netlink.NewRule()
	mark.Family = fam
	mark.Priority = r.priority() + 1
	mark.Table = r.table()
	mark.Mark = r.fwMark()
	mark.Invert = true
	return []*netlink.Rule{suppress, mark}
}

// ownsRule reports whether Remove deletes rule.
func (r *Routing) ownsRule(rule *netlink.Rule) bool {
	switch rule.Priority {
	case r.priority():
		return rule.Table == tableMain && rule.SuppressPrefixlen == 0
	case r.priority() + 1:
		return rule.Table == r.table()
	}
	return false
}

// hasRule reports whether rules contains one equivalent to want, as built
// by Routing.rules.
func hasRule(rules []netlink.Rule, want *netlink.Rule) bool {
	for _, got := range rules {
		if got.Priority == want.Priority && got.Table == want.Table &&
			got.Invert == want.Invert && got.Mark == want.Mark &&
			got.SuppressPrefixlen == want.SuppressPrefixlen &&
			got.Src == nil && got.Dst == nil && got.IifName == "" && got.OifName == "" {
			return true
		}
	}
	return false
}

func describeRule(rule *netlink.Rule) string {
	if rule.Invert {
		return fmt.Sprintf("pref %d not fwmark %#x lookup %d", rule.Priority, rule.Mark, rule.Table)
	}
	return fmt.Sprintf("pref %d lookup %d suppress_prefixlength %d", rule.Priority, rule.Table, rule.SuppressPrefixlen)
}

// addRoute adds rt, or replaces a route with its key, and reports whether
// it added it.
func addRoute(rt *netlink.Route) (added bool, err error) {
	err = netlink.RouteAdd(rt)
	if errors.Is(err, unix.EEXIST) {
		return false, netlink.RouteReplace(rt)
	}
	return err == nil, err
}

// delRoute deletes rt; a route that is gone already is no error.
func delRoute(rt *netlink.Route) error {
	err := netlink.RouteDel(rt)
	if err == nil || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return fmt.Errorf("delete route %v table %d: %w", rt.Dst, rt.Table, err)
}

// delRule deletes rule; a rule that is gone already is no error.
func delRule(rule *netlink.Rule) error {
	err := netlink.RuleDel(rule)
	if err == nil || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
		return nil
	}
	return fmt.Errorf("delete rule %s: %w", describeRule(rule), err)
}

func family(p netip.Prefix) int {
	if p.Addr().Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// Replace moves the routing from old (what Apply installed for it) to r:
// r's routes and throw routes go in first, then those of old that r does
// not hold go, so that no destination is without its route in between.
// Rules are kept. Both must name the same table.
func (r *Routing) Replace(old *Routing) error {
	if old.table() != r.table() {
		return fmt.Errorf("replace routing: table %d, was %d", r.table(), old.table())
	}
	if err := r.Apply(); err != nil {
		return err
	}
	var errs []error
	for _, p := range old.Routes {
		if slices.Contains(r.Routes, p) {
			continue
		}
		rt := &netlink.Route{Dst: prefixIPNet(p.Masked()), Table: r.table()}
		if p.Addr().Is4() {
			rt.Scope = netlink.SCOPE_LINK // as Apply added it
		}
		if err := delRoute(rt); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range old.Excludes {
		if slices.Contains(r.Excludes, p) {
			continue
		}
		if err := delRoute(&netlink.Route{Dst: prefixIPNet(p.Masked()), Table: r.table(), Type: unix.RTN_THROW}); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("replace routing: %w", err)
	}
	return nil
}
