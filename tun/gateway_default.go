//go:build !linux

package tun

import (
	"errors"
	"fmt"
)

// NewGateway creates the gateway table. It is implemented only on Linux;
// elsewhere it returns an error that wraps [errors.ErrUnsupported].
func NewGateway(table, tunName string) (*Gateway, error) {
	return nil, fmt.Errorf("create gateway table %s: %w", table, errors.ErrUnsupported)
}

// Close deletes the gateway's table.
func (g *Gateway) Close() error { return nil }
