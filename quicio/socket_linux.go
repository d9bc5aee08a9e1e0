package quicio

import (
	"fmt"
	"net/netip"

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

// routeMTU returns the largest UDP payload that the kernel's route to dst
// carries, as a socket with mark would use it: the route's MTU, including a
// path MTU learnt from ICMP, minus the IP and UDP headers; 0 if unknown.
func routeMTU(dst netip.Addr, mark uint32) int {
	dst = dst.Unmap()
	if !dst.IsValid() || dst.Zone() != "" {
		return 0
	}
	family, level, opt, hdr := unix.AF_INET6, unix.IPPROTO_IPV6, unix.IPV6_MTU, 40+8
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: 9, Addr: dst.As16()}
	if dst.Is4() {
		family, level, opt, hdr = unix.AF_INET, unix.IPPROTO_IP, unix.IP_MTU, 20+8
		sa = &unix.SockaddrInet4{Port: 9, Addr: dst.As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	defer unix.Close(fd)
	if mark != 0 && unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)) != nil {
		return 0
	}
	// A UDP connect only looks the route up: nothing is sent.
	if unix.Connect(fd, sa) != nil {
		return 0
	}
	mtu, err := unix.GetsockoptInt(fd, level, opt)
	if err != nil || mtu <= hdr {
		return 0
	}
	return mtu - hdr
}
