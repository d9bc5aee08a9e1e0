//go:build !linux

package tun

import (
	"errors"
	"fmt"
)

// NewKillSwitch creates the kill switch. It is implemented only on Linux;
// elsewhere it returns an error that wraps [errors.ErrUnsupported].
func NewKillSwitch(cfg KillSwitchConfig) (*KillSwitch, error) {
	return nil, fmt.Errorf("kill switch: %w", errors.ErrUnsupported)
}

// Close deletes the kill switch's table.
func (k *KillSwitch) Close() error { return nil }
