package tun

import (
	"errors"
	"fmt"
)

// DefaultGatewayTable is the inet nftables table that makes the client a
// gateway into its tunnel for the hosts behind it (masque up
// --allow-forward) when no kill switch's table holds the same chains.
const DefaultGatewayTable = "masque_forward"

// Gateway is an nftables table of its own, of family inet, that lets the
// hosts behind this one (containers on a bridge, virtual machines) use
// the tunnel: a forward chain accepts what the host forwards into the TUN
// and, of what it would forward from the TUN, only replies (conntrack
// established or related), so that the server still cannot open a
// connection to a host behind this one; a nat chain masquerades what
// leaves through the TUN to the TUN's address, the only source the client
// sends. A kill switch with [KillSwitchConfig.AllowForward] holds the
// same chains in its own table. Close deletes the table in the namespace
// it was created in.
//
// The kernel forwards the replies only if the TUN forwards IPv4
// ([Config.AllowForward]) and the host forwards at all
// (net.ipv4.ip_forward, net.ipv6.conf.all.forwarding): the host's
// forwarding is its owner's, not the Gateway's, business.
type Gateway struct{ nftTable }

func validateGateway(table, tunName string) error {
	var errs []error
	if err := validateTableName(table); err != nil {
		errs = append(errs, fmt.Errorf("table: %w", err))
	}
	if err := validateLinkName(tunName, false); err != nil {
		errs = append(errs, fmt.Errorf("tun: %w", err))
	}
	return errors.Join(errs...)
}
