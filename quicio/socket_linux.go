package quicio

import (
	"fmt"

	"golang.org/x/sys/unix"
)

func applySocketOptions(fd int, opts socketOptions) error {
	if opts.buffer > 0 {
		// The FORCE variants ignore net.core.[rw]mem_max but need
		// CAP_NET_ADMIN; fall back to the capped ones without it.
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, opts.buffer) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, opts.buffer)
		}
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, opts.buffer) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, opts.buffer)
		}
	}
	if opts.mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(opts.mark)); err != nil {
			return fmt.Errorf("set SO_MARK %#x: %w", opts.mark, err)
		}
	}
	return nil
}
