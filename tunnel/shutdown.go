package tunnel

// The server's end, in two phases: Shutdown drains (GOAWAY, then waits for
// the requests in progress), and the final phase, Shutdown's or Close's,
// ends what is left.

import (
	"context"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// Shutdown drains the server: every connection gets a GOAWAY (RFC 9114
// §5.2), which tells its client to open its next session elsewhere or
// later; requests after it are rejected, those before it are still served,
// and sessions and flows carry on. Once
// they have all ended, or ctx is done, what is left is ended (clients see
// their tunnel closed), and after a short grace for those ends to reach the
// clients each connection is closed with H3_NO_ERROR. It returns ctx's
// error if sessions were still up when ctx was done.
func (s *Server) Shutdown(ctx context.Context) error {
	_, conns := s.startClosing(false)
	for _, hc := range conns {
		hc.goAway()
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var err error
wait:
	for s.requests.Load() > 0 {
		select {
		case <-ctx.Done():
			err = ctx.Err()
			break wait
		case <-tick.C:
		}
	}
	sessions, conns := s.startClosing(true)
	for _, ss := range sessions {
		ss.close()
	}
	s.udp.close()
	grace, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	var wg sync.WaitGroup
	for _, hc := range conns {
		wg.Go(func() {
			done := make(chan struct{})
			go func() {
				hc.handlers.Wait()
				close(done)
			}()
			select {
			case <-done:
			case <-grace.Done():
			}
			hc.conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "server shutting down")
		})
	}
	wg.Wait()
	return err
}

// shutdownGrace is how long Shutdown lets the sessions it ends finish their
// streams before it closes their connections.
const shutdownGrace = 250 * time.Millisecond

// startClosing marks the server draining, or closing if final, and returns
// what is open.
func (s *Server) startClosing(final bool) ([]*session, []*h3conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if final {
		s.closing = true
	} else {
		s.draining = true
	}
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	conns := make([]*h3conn, 0, len(s.conns))
	for _, hc := range s.conns {
		conns = append(conns, hc)
	}
	return sessions, conns
}

// Close ends everything at once. The Device must be closed by its owner
// after Close returns for the TUN reader to exit; Close waits for it.
func (s *Server) Close() error {
	sessions, conns := s.startClosing(true)
	for _, ss := range sessions {
		ss.close()
	}
	s.udp.close()
	for _, hc := range conns {
		hc.conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "server closed")
	}
	return nil
}
