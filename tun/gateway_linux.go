package tun

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// NewGateway creates, in one atomic netlink batch, the table "inet
// <table>" with the chains of [Gateway] for the TUN link tunName (which
// need not exist yet: the rules match its name), in the calling thread's
// network namespace. A table of that name left over from a crash is
// replaced in the same batch.
func NewGateway(table, tunName string) (*Gateway, error) {
	if err := validateGateway(table, tunName); err != nil {
		return nil, fmt.Errorf("create gateway table %s: %w", table, err)
	}
	g := &Gateway{}
	c, t, err := g.begin(table)
	if err != nil {
		return nil, fmt.Errorf("create gateway table %s: %w", table, err)
	}
	addForwardChains(c, t, tunName, true)
	if err := g.commit(c); err != nil {
		return nil, fmt.Errorf("create gateway table %s: %w", table, err)
	}
	return g, nil
}

// Close deletes the gateway's table; one that is gone already is no
// error. Close is idempotent.
func (g *Gateway) Close() error { return g.close("gateway") }

// addForwardChains adds to the batch c a forward chain in table t, policy
// accept (the rest of the host's forwarding is not masque's business),
// with forwardRules for the TUN tunName, and, if allow, a nat chain on
// postrouting at priority srcnat that masquerades what leaves through the
// TUN:
//
//	oifname tunName masquerade
func addForwardChains(c *nftables.Conn, t *nftables.Table, tunName string, allow bool) {
	accept := nftables.ChainPolicyAccept
	fwd := c.AddChain(&nftables.Chain{
		Name:     "forward",
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookForward,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &accept,
	})
	for _, e := range forwardRules(tunName, allow) {
		c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: e})
	}
	if !allow {
		return
	}
	nat := c.AddChain(&nftables.Chain{
		Name:     natChain,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	})
	c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(tunName)},
		&expr.Masq{},
	}})
}

// forwardRules returns the forward chain's rules, verdicts included.
// Without allow nothing is forwarded from the TUN to another interface
// (the server would reach the LAN through the host) or from another
// interface into the TUN (the host would be a router into the tunnel for
// others):
//
//	iifname tunName drop
//	oifname tunName drop
//
// With allow, what is forwarded into the TUN passes (the chain's policy),
// and from the TUN only the replies to it do:
//
//	iifname tunName ct state established,related accept
//	iifname tunName drop
func forwardRules(tunName string, allow bool) [][]expr.Any {
	iif := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(tunName)},
	}
	drop := &expr.Verdict{Kind: expr.VerdictDrop}
	if !allow {
		return [][]expr.Any{
			append(iif[:len(iif):len(iif)], drop),
			{
				&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(tunName)},
				drop,
			},
		}
	}
	// The conntrack state is a bit mask in host byte order.
	mask, zero := make([]byte, 4), make([]byte, 4)
	binary.NativeEndian.PutUint32(mask, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
	reply := append(iif[:len(iif):len(iif)],
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: zero},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: zero},
		&expr.Verdict{Kind: expr.VerdictAccept},
	)
	return [][]expr.Any{reply, append(iif[:len(iif):len(iif)], drop)}
}
