package quicio

import (
	"context"
	"fmt"
	"net"
	"syscall"
)

// DefaultSocketBuffer is the UDP send and receive buffer size asked for when
// a Config leaves it zero. Bursts of QUIC packets at line rate overflow the
// kernel default (208 KiB) long before quic-go's read loop falls behind.
const DefaultSocketBuffer = 8 << 20

// socketOptions are applied to a UDP socket before it is bound.
type socketOptions struct {
	buffer int    // SO_RCVBUF/SO_SNDBUF, forced where privileged
	mark   uint32 // SO_MARK; 0 leaves it unset
}

// listenUDP opens a UDP socket on addr with opts applied.
func listenUDP(addr string, opts socketOptions) (*net.UDPConn, error) {
	lc := net.ListenConfig{
		Control: func(network, address string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = applySocketOptions(int(fd), opts) })
			if err != nil {
				return err
			}
			return serr
		},
	}
	pc, err := lc.ListenPacket(context.Background(), "udp", addr)
	if err != nil {
		return nil, err
	}
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("listen %s: not a UDP socket", addr)
	}
	return uc, nil
}
