package tun

import (
	"runtime"
	"testing"

	"go.uber.org/goleak"
)

// init keeps the main goroutine, which only waits for the tests, on the
// main thread, so that no test moves the main thread into a namespace of
// its own (nstest): /proc/PID/ns/net, the namespace of the process as
// others see it, stays the host's.
func init() { runtime.LockOSThread() }

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
