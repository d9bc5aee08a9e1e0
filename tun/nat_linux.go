package tun

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// NewNAT creates, in one atomic netlink batch, the table "inet <table>"
// with a chain of type nat on hook postrouting at priority srcnat (100)
// and, for each source prefix, a rule that masquerades packets from that
// prefix leaving through the interface egress, or, when egress is empty,
// through any interface but tunName. A table of that name left over from
// a crash is replaced in the same batch.
//
// Forwarding itself is not NAT's business: the caller enables it with
// SetSysctl (net/ipv4/ip_forward, net/ipv6/conf/all/forwarding).
func NewNAT(table, egress, tunName string, sources []netip.Prefix) (*NAT, error) {
	if err := validateNAT(table, egress, tunName, sources); err != nil {
		return nil, fmt.Errorf("create nat table %s: %w", table, err)
	}
	n := &NAT{}
	c, t, err := n.begin(table)
	if err != nil {
		return nil, fmt.Errorf("create nat table %s: %w", table, err)
	}
	ch := c.AddChain(&nftables.Chain{
		Name:     natChain,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	})
	for _, p := range sources {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: masqueradeExprs(p.Masked(), egress, tunName)})
	}
	if err := n.commit(c); err != nil {
		return nil, fmt.Errorf("create nat table %s: %w", table, err)
	}
	return n, nil
}

// begin opens the calling thread's network namespace and starts a batch
// that (re)creates the inet table name: "add table; delete table; add
// table" replaces a leftover of a crash without a window, and never fails
// for want of one, as adding an existing table without NLM_F_EXCL is a
// no-op. The caller adds chains and rules, then calls commit.
func (t *nftTable) begin(name string) (*nftables.Conn, *nftables.Table, error) {
	nsFD, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open network namespace: %w", err)
	}
	t.table, t.nsFD = name, nsFD
	c, err := t.conn()
	if err != nil {
		unix.Close(nsFD)
		return nil, nil, err
	}
	nt := &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	c.AddTable(nt)
	c.DelTable(nt)
	c.AddTable(nt)
	return c, nt, nil
}

// commit sends the batch begin started, atomically.
func (t *nftTable) commit(c *nftables.Conn) error {
	if err := c.Flush(); err != nil {
		unix.Close(t.nsFD)
		t.nsFD = -1
		return err
	}
	return nil
}

// masqueradeExprs builds
//
//	meta nfproto ipv4|ipv6 [ip|ip6 saddr p] oifname egress masquerade
//
// or, with egress empty, oifname != tunName.
func masqueradeExprs(p netip.Prefix, egress, tunName string) []expr.Any {
	e := prefixMatch(p, false)
	op, name := expr.CmpOpEq, egress
	if egress == "" {
		op, name = expr.CmpOpNeq, tunName
	}
	e = append(e,
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: ifname(name)},
		&expr.Masq{},
	)
	return e
}

// prefixMatch matches packets of p's family whose source (dst false) or
// destination (dst true) address is inside p:
//
//	meta nfproto ipv4|ipv6 [ip|ip6 saddr|daddr p]
func prefixMatch(p netip.Prefix, dst bool) []expr.Any {
	proto, off := byte(unix.NFPROTO_IPV4), uint32(12) // IPv4 source address
	if p.Addr().Is6() {
		proto, off = unix.NFPROTO_IPV6, 8 // IPv6 source address
	}
	if dst {
		off += uint32(p.Addr().BitLen() / 8) // the destination follows
	}
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
	if p.Bits() == 0 {
		return e
	}
	addr := p.Addr().AsSlice()
	e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(len(addr))})
	if p.Bits() < p.Addr().BitLen() {
		e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(addr)), Mask: prefixMask(p.Bits(), len(addr)), Xor: make([]byte, len(addr))})
	}
	return append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr})
}

// ifname encodes an interface name as nftables compares it: NUL-padded to
// IFNAMSIZ.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// conn returns an nftables connection to the table's namespace.
func (t *nftTable) conn() (*nftables.Conn, error) {
	if t.nsFD <= 0 { // fd 0 is stdin, not a namespace: a table not made by begin
		return nftables.New()
	}
	return nftables.New(nftables.WithNetNSFd(t.nsFD))
}

// close deletes the table; one that is gone already is no error. close is
// idempotent; what names the table's owner in errors.
func (t *nftTable) close(what string) error {
	t.closeOnce.Do(func() {
		c, err := t.conn()
		if err == nil {
			err = deleteTable(c, t.table)
		}
		if t.nsFD > 0 {
			unix.Close(t.nsFD)
			t.nsFD = -1
		}
		if err != nil {
			t.closeErr = fmt.Errorf("close %s: %w", what, err)
		}
	})
	return t.closeErr
}

// Close deletes the NAT's table; a table that is gone already is no
// error. Close is idempotent.
func (n *NAT) Close() error { return n.close("nat") }

// DeleteTable deletes the nftables table "inet <table>" in the calling
// thread's network namespace; a table that does not exist is no error.
func DeleteTable(table string) error {
	if err := validateTableName(table); err != nil {
		return fmt.Errorf("delete nft table: %w", err)
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("delete nft table inet %s: %w", table, err)
	}
	return deleteTable(c, table)
}

func deleteTable(c *nftables.Conn, table string) error {
	c.DelTable(&nftables.Table{Name: table, Family: nftables.TableFamilyINet})
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete nft table inet %s: %w", table, err)
	}
	return nil
}

// TableExists reports whether the nftables table "inet <table>" exists in
// the calling thread's network namespace.
func TableExists(table string) (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("list nft tables: %w", err)
	}
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("list nft tables: %w", err)
	}
	return slices.ContainsFunc(ts, func(t *nftables.Table) bool { return t.Name == table }), nil
}
