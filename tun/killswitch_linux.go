package tun

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// NewKillSwitch creates the kill switch in one atomic netlink batch
// (replacing a table of the same name left over from a crash, without a
// window), in the calling thread's network namespace.
func NewKillSwitch(cfg KillSwitchConfig) (*KillSwitch, error) {
	if cfg.Table == "" {
		cfg.Table = DefaultKillSwitchTable
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("kill switch: %w", err)
	}
	k := &KillSwitch{}
	c, t, err := k.begin(cfg.Table)
	if err != nil {
		return nil, fmt.Errorf("kill switch: %w", err)
	}
	drop := nftables.ChainPolicyDrop
	ch := c.AddChain(&nftables.Chain{
		Name:     "output",
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookOutput,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &drop,
	})
	for _, e := range killSwitchRules(cfg) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: append(e, &expr.Verdict{Kind: expr.VerdictAccept})})
	}
	// The forward chain: see forwardRules.
	addForwardChains(c, t, cfg.Tun, cfg.AllowForward)
	if err := k.commit(c); err != nil {
		return nil, fmt.Errorf("kill switch: create table %s: %w", cfg.Table, err)
	}
	return k, nil
}

// killSwitchRules returns the match expressions of the accept rules.
func killSwitchRules(cfg KillSwitchConfig) [][]expr.Any {
	oif := func(name string) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(name)},
		}
	}
	nfproto := func(p byte) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
		}
	}
	l4 := func(p byte) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
		}
	}
	ports := func(sport, dport uint16) []expr.Any {
		b := make([]byte, 4)
		binary.BigEndian.PutUint16(b, sport)
		binary.BigEndian.PutUint16(b[2:], dport)
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
		}
	}
	cat := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	mark := make([]byte, 4)
	binary.NativeEndian.PutUint32(mark, cfg.FwMark)
	rules := [][]expr.Any{
		oif("lo"),
		oif(cfg.Tun),
		// The tunnel's own QUIC flow (SO_MARK on its socket).
		{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: mark},
		},
		// DHCPv4 and DHCPv6 clients keep the physical link's address.
		cat(nfproto(unix.NFPROTO_IPV4), l4(unix.IPPROTO_UDP), ports(68, 67)),
		cat(nfproto(unix.NFPROTO_IPV6), l4(unix.IPPROTO_UDP), ports(546, 547)),
	}
	// IPv6 needs neighbour discovery and router solicitation to reach
	// the next hop at all (ICMPv6 types 133-136).
	for typ := byte(133); typ <= 136; typ++ {
		rules = append(rules, cat(nfproto(unix.NFPROTO_IPV6), l4(unix.IPPROTO_ICMPV6), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{typ}},
		}))
	}
	for _, p := range cfg.Allow {
		rules = append(rules, prefixMatch(p.Masked(), true))
	}
	return rules
}

// Close deletes the kill switch's table; one that is gone already is no
// error. Close is idempotent.
func (k *KillSwitch) Close() error { return k.close("kill switch") }
