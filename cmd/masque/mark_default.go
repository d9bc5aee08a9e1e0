//go:build !linux

package main

import (
	"errors"
	"syscall"
)

// markControl returns a net.Dialer Control function that would set SO_MARK;
// firewall marks exist only on Linux.
func markControl(uint32) func(network, address string, c syscall.RawConn) error {
	return func(string, string, syscall.RawConn) error { return errors.ErrUnsupported }
}
