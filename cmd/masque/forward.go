package main

import (
	"log/slog"

	"github.com/masque-vpn/masque/tun"
)

// allowForwardHelp is the help of masque up --allow-forward.
const allowForwardHelp = "let hosts behind this one (containers, VMs) use the tunnel: what the host forwards into it is " +
	"masqueraded to the tunnel's address, and only replies are forwarded back, so the server still cannot open " +
	"connections to them (needs net.ipv4.ip_forward=1, which masque leaves to the host)"

// gatewayTable returns the nftables table of its own that --allow-forward
// needs in a run with the kill switch on or off: none with the kill
// switch, whose table holds the same chains.
func gatewayTable(c *upConfig, killSwitch bool) (string, bool) {
	return c.slot.GatewayTable(), c.allowForward && !killSwitch
}

// allowForward makes the host a gateway into the tunnel for the hosts
// behind it, with --allow-forward, once st records the gateway's table
// (gatewayTable); the kill switch's own chains do it when it is on. The
// host's forwarding (net.ipv4.ip_forward) is its owner's, Docker's for
// one: a host that does not forward gets a warning, not a change.
func allowForward(c *upConfig, killSwitch bool, logger *slog.Logger) error {
	if !c.allowForward {
		return nil
	}
	if table, ok := gatewayTable(c, killSwitch); ok {
		if _, err := tun.NewGateway(table, c.tun); err != nil {
			return err
		}
	}
	if v, err := tun.ReadSysctl("net/ipv4/ip_forward"); err == nil && v == "0" {
		logger.Warn("net.ipv4.ip_forward is 0: forwarded hosts will not reach the tunnel until it is 1")
	}
	logger.Info("hosts behind this one may use the tunnel", "tun", c.tun)
	return nil
}
