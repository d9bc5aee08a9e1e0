//go:build !linux

package quicio

import (
	"errors"
	"net/netip"
)

func applySocketOptions(fd int, opts socketOptions) error {
	if opts.mark != 0 {
		return errors.New("socket marks are only supported on linux")
	}
	return nil
}

// routeMTU is unknown (0) off Linux.
func routeMTU(netip.Addr, uint32) int { return 0 }
