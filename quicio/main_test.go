package quicio

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: the
// Server promises that every goroutine it started has exited once Serve
// and Shutdown or Close have returned.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
