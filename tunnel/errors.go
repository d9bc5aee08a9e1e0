package tunnel

import (
	"errors"
	"net"
	"os"
)

// isClosed reports whether err means the device or connection was closed,
// a clean stop rather than a failure.
func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed)
}
