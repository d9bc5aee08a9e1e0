package tun

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
)

// Defaults for the zero values of [Routing]'s fields.
const (
	// DefaultTable is the routing table used when Routing.Table is 0
	// (0x4d51, "MQ").
	DefaultTable = 0x4d51
	// DefaultFwMark is the firewall mark used when Routing.FwMark is 0.
	DefaultFwMark = 0x4d51
	// DefaultRulePriority is the rule priority used when
	// Routing.RulePriority is 0.
	DefaultRulePriority = 5200
)

// Reserved routing tables (rtnetlink's RT_TABLE_*), which Routing refuses:
// Remove flushes its table.
const (
	tableDefault = 253
	tableMain    = 254
	tableLocal   = 255
)

// Routing is the client's policy routing, as wg-quick sets it up for a
// full or split tunnel: a dedicated table routes Routes into the TUN, and
// two rules per address family send every packet there except those that
// carry FwMark (the tunnel's own QUIC socket sets it) and those that the
// main table routes more specifically than by its default route:
//
//	pref RulePriority   lookup main suppress_prefixlength 0
//	pref RulePriority+1 not fwmark FwMark lookup Table
//
// With suppress_prefixlength 0 the main table still routes the local
// networks, while its default route is ignored; Excludes become throw
// routes in Table, so that lookups for them fall through to the main
// table. Zero values mean the documented defaults.
type Routing struct {
	// Link is the TUN's interface name.
	Link string `json:"link,omitempty"`
	// Table is the dedicated routing table; 0 means DefaultTable. It must
	// not be a reserved table (253, 254, 255).
	Table int `json:"table,omitempty"`
	// FwMark marks the packets that bypass Table; 0 means DefaultFwMark.
	FwMark uint32 `json:"fwmark,omitempty"`
	// RulePriority is the priority of the first rule, the second has
	// RulePriority+1; 0 means DefaultRulePriority. It must be in
	// 1..32764, so that both rules come before the main table's (32766).
	RulePriority int `json:"rule_priority,omitempty"`
	// Routes are routed into the TUN, for example 0.0.0.0/0 and ::/0.
	Routes []netip.Prefix `json:"routes,omitempty"`
	// Excludes go via the main table even though Routes cover them. An
	// exclude of an address family without routes is ignored, because no
	// rule of that family sends anything to Table.
	Excludes []netip.Prefix `json:"excludes,omitempty"`
}

// Validate reports every problem in r at once, joined with [errors.Join];
// each names the offending field. Apply needs Link when there are Routes;
// Remove needs only the table and the rule priority.
func (r *Routing) Validate() error {
	errs := r.validateIDs()
	if len(r.Routes) > 0 {
		if err := validateLinkName(r.Link, false); err != nil {
			errs = append(errs, fmt.Errorf("link: %w", err))
		}
	}
	errs = append(errs, validatePrefixes("routes", r.Routes)...)
	errs = append(errs, validatePrefixes("excludes", r.Excludes)...)
	return errors.Join(errs...)
}

// validateIDs checks what Remove relies on.
func (r *Routing) validateIDs() []error {
	var errs []error
	switch t := r.table(); {
	case t < 0 || int64(t) > math.MaxUint32:
		errs = append(errs, fmt.Errorf("table: %d out of range", t))
	case t == tableDefault || t == tableMain || t == tableLocal:
		errs = append(errs, fmt.Errorf("table: %d is a reserved table", t))
	}
	if p := r.priority(); p < 1 || p > 32764 {
		errs = append(errs, fmt.Errorf("rule_priority: %d out of range 1..32764", p))
	}
	return errs
}

func validatePrefixes(field string, ps []netip.Prefix) []error {
	var errs []error
	for i, p := range ps {
		switch {
		case !p.IsValid():
			errs = append(errs, fmt.Errorf("%s[%d]: invalid prefix", field, i))
		case p.Addr().Is4In6():
			errs = append(errs, fmt.Errorf("%s[%d]: %v: IPv4-mapped IPv6 prefix", field, i, p))
		case p.Addr().Zone() != "":
			errs = append(errs, fmt.Errorf("%s[%d]: %v: prefix has a zone", field, i, p))
		}
	}
	return errs
}

func (r *Routing) table() int {
	if r.Table == 0 {
		return DefaultTable
	}
	return r.Table
}

func (r *Routing) fwMark() uint32 {
	if r.FwMark == 0 {
		return DefaultFwMark
	}
	return r.FwMark
}

func (r *Routing) priority() int {
	if r.RulePriority == 0 {
		return DefaultRulePriority
	}
	return r.RulePriority
}
