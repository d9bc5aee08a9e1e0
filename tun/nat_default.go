//go:build !linux

package tun

import (
	"errors"
	"fmt"
	"net/netip"
)

// NewNAT creates the masquerading table. It is implemented only on Linux;
// elsewhere it returns an error that wraps [errors.ErrUnsupported].
func NewNAT(table, egress, tunName string, sources []netip.Prefix) (*NAT, error) {
	return nil, fmt.Errorf("create nat table %s: %w", table, errors.ErrUnsupported)
}

// Close deletes the NAT's table.
func (n *NAT) Close() error { return nil }

// DeleteTable deletes the nftables table "inet <table>". It is implemented
// only on Linux; elsewhere it returns an error that wraps
// [errors.ErrUnsupported].
func DeleteTable(table string) error {
	return fmt.Errorf("delete nft table inet %s: %w", table, errors.ErrUnsupported)
}

// TableExists reports whether the nftables table "inet <table>" exists. It
// is implemented only on Linux; elsewhere it returns an error that wraps
// [errors.ErrUnsupported].
func TableExists(table string) (bool, error) {
	return false, fmt.Errorf("list nft tables: %w", errors.ErrUnsupported)
}
