// Package nstest gives root-only tests a network namespace of their own,
// so that they can create links, routes, rules and nftables tables without
// touching the host's.
package nstest

import (
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// New skips the test unless it runs as root. Otherwise it locks the
// calling goroutine to its OS thread for good, moves that thread into a
// fresh network namespace and sets the namespace's loopback up. Everything
// the test then does from this goroutine (netlink, nftables, /proc/sys,
// /dev/net/tun, sockets, child processes) happens in that namespace.
//
// The thread is never unlocked: when the test's goroutine ends, the Go
// runtime terminates it instead of handing a thread in a foreign namespace
// back to the scheduler. The namespace itself goes away once the thread
// and every file descriptor that refers to it are gone. Call New at the
// top of a test or subtest, from its own goroutine (each t.Run starts a
// new one); t.Cleanup functions run on that goroutine, still in the
// namespace.
func New(t testing.TB) netns.NsHandle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	runtime.LockOSThread()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("netns.New() = %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatalf("netlink.LinkByName(lo) = %v", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatalf("netlink.LinkSetUp(lo) = %v", err)
	}
	return ns
}
