package quicio

import (
	"context"

	"github.com/quic-go/quic-go"
)

// Application is what quicio hands each accepted connection to, the
// counterpart of tokio-quiche's ApplicationOverQuic fitted to Go's blocking
// model.
//
// ServeConn drives one connection and returns when it is done with it; it is
// called from the connection's own worker goroutine and must be safe to call
// concurrently for different connections. quicio closes the connection after
// ServeConn returns if it is still open.
//
// Shutdown starts a graceful drain (for HTTP/3: GOAWAY) and returns when every
// ServeConn has returned or ctx is done, whichever is first. After ctx is done
// quicio closes the remaining connections itself.
type Application interface {
	ServeConn(ctx context.Context, c *quic.Conn) error
	Shutdown(ctx context.Context) error
}

// Hooks are optional callbacks around a connection's lifetime. Each may be nil.
type Hooks struct {
	// OnEstablished is called once the handshake is complete, before
	// ServeConn. A non-nil error closes the connection with that reason.
	OnEstablished func(c *quic.Conn) error
	// OnClose is called after the connection is closed, with its final
	// statistics.
	OnClose func(c *quic.Conn, stats quic.ConnectionStats)
}
