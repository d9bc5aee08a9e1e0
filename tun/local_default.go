//go:build !linux

package tun

import (
	"errors"
	"fmt"
	"net/netip"
)

// LocalPrefixes returns the host's own addresses with their connected
// networks. It is implemented only on Linux; elsewhere it returns an
// error that wraps [errors.ErrUnsupported].
func LocalPrefixes(skip string) ([]netip.Prefix, error) {
	return nil, fmt.Errorf("list addresses: %w", errors.ErrUnsupported)
}
