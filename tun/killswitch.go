package tun

import (
	"errors"
	"fmt"
	"net/netip"
)

// DefaultKillSwitchTable is the inet nftables table of the client's kill
// switch.
const DefaultKillSwitchTable = "masque_killswitch"

// KillSwitchConfig describes what may leave the host while a full tunnel
// is up.
type KillSwitchConfig struct {
	// Table is the inet table to create (DefaultKillSwitchTable).
	Table string
	// Tun is the tunnel's TUN link: everything may leave through it.
	Tun string
	// FwMark marks the tunnel's own QUIC socket (SO_MARK): its packets may
	// leave through any interface.
	FwMark uint32
	// Allow are destinations that may be reached outside the tunnel: the
	// --exclude prefixes and, with --allow-lan, the local networks.
	Allow []netip.Prefix
	// AllowForward lets the hosts behind this one use the tunnel (masque
	// up --allow-forward): the table then holds the chains of [Gateway],
	// which accept what is forwarded into Tun, masquerade it to Tun's
	// address and let only replies be forwarded from Tun. Without it
	// nothing is forwarded into Tun or from it.
	AllowForward bool
}

// Validate reports every problem in c at once.
func (c *KillSwitchConfig) Validate() error {
	var errs []error
	if err := validateTableName(c.Table); err != nil {
		errs = append(errs, fmt.Errorf("table: %w", err))
	}
	if err := validateLinkName(c.Tun, false); err != nil {
		errs = append(errs, fmt.Errorf("tun: %w", err))
	}
	if c.FwMark == 0 {
		errs = append(errs, errors.New("fwmark: 0 would let unmarked packets out"))
	}
	errs = append(errs, validatePrefixes("allow", c.Allow)...)
	return errors.Join(errs...)
}

// KillSwitch is an nftables table with an output chain whose policy is
// drop: while it exists, a packet leaves the host only through loopback or
// the TUN, or carrying the tunnel socket's mark, or towards an allowed
// prefix; besides these, only what keeps the physical link itself working
// (IPv6 neighbour discovery and router solicitation, DHCPv4/DHCPv6
// requests). It covers IPv4 and IPv6 alike, so a tunnel without IPv6
// blocks IPv6 rather than leaking it, and a route injected on a physical
// interface cannot pull traffic out. A forward chain in the same table
// drops whatever the host would forward from the TUN to another
// interface or from another interface into the TUN (with
// [KillSwitchConfig.AllowForward], all but what hosts behind this one
// send through the tunnel and the replies to it). Close deletes the
// table.
type KillSwitch struct{ nftTable }
