//go:build !linux

package main

import "syscall"

// bigBuffers is a no-op where SO_RCVBUFFORCE does not exist.
func bigBuffers(_, _ string, _ syscall.RawConn) error { return nil }
