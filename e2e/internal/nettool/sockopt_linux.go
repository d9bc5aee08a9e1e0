package main

import (
	"errors"
	"syscall"
)

// bigBuffers gives a socket 4 MB send and receive buffers, past rmem_max
// (nettool runs as root), so that a CPU-starved reader on a 2-core machine
// does not lose datagrams in its own socket and blame the tunnel.
func bigBuffers(_, _ string, c syscall.RawConn) error {
	var err error
	cerr := c.Control(func(fd uintptr) {
		err = errors.Join(
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, 4<<20),
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUFFORCE, 4<<20),
		)
	})
	return errors.Join(cerr, err)
}
