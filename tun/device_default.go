//go:build !linux

package tun

import (
	"errors"
	"fmt"
	"net/netip"
)

// Create creates the TUN device that cfg describes. It is implemented only
// on Linux; elsewhere it returns an error that wraps
// [errors.ErrUnsupported].
func Create(cfg Config) (*Device, error) {
	return nil, fmt.Errorf("create tun: %w", errors.ErrUnsupported)
}

func deleteTUNLink(name string) error {
	return fmt.Errorf("delete link %s: %w", name, errors.ErrUnsupported)
}

func lookupLink(name string) (linkInfo, error) {
	return linkInfo{}, fmt.Errorf("look up link %s: %w", name, errors.ErrUnsupported)
}

// MTU returns the link's current MTU.
func (d *Device) MTU() (int, error) { return d.Device.MTU() }

func (d *Device) closeCtl() {}

// SetMTU is not supported on this platform.
func (d *Device) SetMTU(int) error { return errors.New("set mtu: not supported on this platform") }

// SetAddrs is not supported on this platform.
func (d *Device) SetAddrs([]netip.Prefix) error {
	return fmt.Errorf("set addresses: %w", errors.ErrUnsupported)
}
