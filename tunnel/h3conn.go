package tunnel

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// Each QUIC connection is served by our own HTTP/3 server side
// (h3server.go), with the accept loops and the datagram receive path in our
// hands:
//
//	AcceptStream ─► serveRequest (requests; then capsules in DATA frames)
//	AcceptUniStream ─► acceptUniStreams (h3control.go): control and QPACK streams
//	ReceiveDatagram ─► dgramMux.run (dgrammux.go, one per connection) ─► session / flow
//	our control stream: SETTINGS, and GOAWAY when the server drains
//
// Why not http3.Server.ServeQUICConn: once it has seen the peer's
// SETTINGS_H3_DATAGRAM, http3 moves every datagram from the connection's
// queue into a 32-entry queue per request stream in a goroutine of its own,
// and drops what does not fit. Under load the reader of that queue lags by
// more than 32 datagrams (scheduling, not CPU: the reader was measured idle
// for 0.1-1 ms at a time) and about 20% of a TCP transfer's packets were
// lost there, every one an inner retransmission (../shared/PERF.md,
// quic-go#5799). dgramMux is the only reader of the connection's datagrams
// and moves them straight into each session's batch, one hop and no second
// queue. Why not http3.RawServerConn either (which we used until issue 7):
// it opens the control stream and keeps it, so no GOAWAY could be sent and
// a shutdown could only cut sessions off.

// h3conn is one served connection.
type h3conn struct {
	conn     *quic.Conn
	mux      *dgramMux
	mem      *connBudget    // header bytes of requests not parsed yet
	handlers sync.WaitGroup // request handlers still running

	// unparsed holds a token for each request stream whose HEADERS have not
	// been parsed yet: at most maxUnparsedRequests at once. The accept loop
	// waits for a token before it accepts the next stream, so a peer that
	// opens streams and never finishes their HEADERS holds that many
	// goroutines and readers, not one per stream quic-go lets it open.
	unparsed chan struct{}

	// settingsDone is closed once the peer's SETTINGS have been read
	// (peer is set before); a connection that ends first never closes it.
	settingsDone chan struct{}
	peer         peerSettings

	mu        sync.Mutex       // guards the fields below
	ctrl      *quic.SendStream // our control stream
	next      quic.StreamID    // the first request stream not accepted yet
	goingAway bool             // GOAWAY sent: later requests are rejected
}

// maxUnparsedRequests bounds the request streams of one connection whose
// HEADERS are still being read.
const maxUnparsedRequests = 8

// waitSettings waits until the peer's SETTINGS have arrived or deadline
// passes, and reports them; ok is false if they did not come in time.
func (hc *h3conn) waitSettings(deadline time.Time) (ps peerSettings, ok bool) {
	select {
	case <-hc.settingsDone:
		return hc.peer, true
	default:
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-hc.settingsDone:
		return hc.peer, true
	case <-t.C:
	case <-hc.conn.Context().Done():
	}
	return peerSettings{}, false
}

// goAway sends GOAWAY (RFC 9114 §5.2) once: the requests accepted so far
// are processed, later ones are rejected with H3_REQUEST_REJECTED, and the
// client knows to open no more on this connection. It does not block.
func (hc *h3conn) goAway() {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if hc.goingAway || hc.ctrl == nil {
		return
	}
	hc.goingAway = true
	f := goAwayFrame(hc.next)
	// The write can block on flow control; it gives up when the
	// connection ends.
	go hc.ctrl.Write(f)
}

// admit records a new request stream, or reports that it comes after
// GOAWAY.
func (hc *h3conn) admit(id quic.StreamID) bool {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if hc.goingAway && id >= hc.next {
		return false
	}
	if id >= hc.next {
		hc.next = id + 4
	}
	return true
}

// errUnauthLimit is serveH3's error for a connection closed at once because
// its source holds maxUnauthConnsPerSource unauthenticated ones.
var errUnauthLimit = errors.New("too many unauthenticated connections from this source")

// serveH3 serves HTTP/3 on c until the connection ends.
//
// Nothing of a request stream counts as a request until its HEADERS have
// been parsed: until then it holds no early-datagram queue, keeps no
// connection alive (the request timeout runs on), must deliver its HEADERS
// within the request timeout, and grows its header buffer only as bytes
// arrive, within the connection's and its source's budgets (h3budget.go).
func (s *Server) serveH3(c *quic.Conn) error {
	mem, ok, evicted := s.budget.forConn(c.RemoteAddr(), func() {
		c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeExcessiveLoad), "too many unauthenticated connections")
	})
	if evicted {
		s.counters.unauthClosed[1].Add(1)
	}
	if !ok {
		s.counters.unauthClosed[0].Add(1)
		c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeExcessiveLoad), "too many unauthenticated connections from this source")
		return errUnauthLimit
	}
	defer mem.close()
	hc := &h3conn{
		conn:         c,
		mux:          newDgramMux(c, &s.counters),
		mem:          mem,
		unparsed:     make(chan struct{}, maxUnparsedRequests),
		settingsDone: make(chan struct{}),
	}
	ctrl, err := openControlStream(c)
	if err != nil {
		c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeInternalError), "")
		return err
	}
	hc.ctrl = ctrl
	s.mu.Lock()
	s.conns[c] = hc
	closing := s.closing || s.draining
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	if closing {
		hc.goAway()
	}

	var wg sync.WaitGroup
	wg.Go(hc.mux.run)
	wg.Go(func() {
		acceptUniStreams(c, http3.ErrCodeStreamCreationError, controlHandlers{
			settings: func(ps peerSettings) {
				hc.peer = ps
				close(hc.settingsDone)
			},
		})
	})
	// A connection without a request in progress for RequestTimeout is
	// closed: after the handshake, or after its last request ended (a
	// refused one, say a 401). A peer that is not using the server holds
	// no slot and no buffers of it for longer than that.
	idle := newIdleCloser(s.cfg.RequestTimeout, func() {
		s.counters.idleConns.Add(1)
		c.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "no request for "+s.cfg.RequestTimeout.String())
	})
	defer idle.stop()
	for {
		select {
		case hc.unparsed <- struct{}{}:
		case <-c.Context().Done():
		}
		if c.Context().Err() != nil {
			break
		}
		str, err := c.AcceptStream(context.Background())
		if err != nil {
			break
		}
		id := str.StreamID()
		if !hc.admit(id) {
			// After GOAWAY (RFC 9114 §5.2): not processed, and the
			// client may retry it elsewhere.
			<-hc.unparsed
			s.counters.refused[refuseShuttingDown].Add(1)
			str.CancelRead(quic.StreamErrorCode(http3.ErrCodeRequestRejected))
			str.CancelWrite(quic.StreamErrorCode(http3.ErrCodeRequestRejected))
			continue
		}
		hc.handlers.Go(func() {
			wasParsed := false
			why := s.serveRequest(hc, str, s.handler, func() {
				// From here the stream is a request: it keeps the
				// connection open (and a drain waiting), and its early
				// datagrams are kept.
				wasParsed = true
				<-hc.unparsed
				s.requests.Add(1)
				idle.begin()
				hc.mux.expect(id)
			})
			if wasParsed {
				hc.mux.forget(id)
				idle.end()
				s.requests.Add(-1)
			} else {
				<-hc.unparsed
			}
			if why != unroutedNone {
				s.counters.unrouted[why].Add(1)
			}
		})
	}
	hc.handlers.Wait()
	wg.Wait()
	return nil
}

// idleCloser calls its function once no request has been in progress for
// its timeout.
type idleCloser struct {
	d     time.Duration
	mu    sync.Mutex // guards the fields below
	t     *time.Timer
	open  int // requests in progress
	ended bool
}

// newIdleCloser starts the clock: no request is in progress yet.
func newIdleCloser(d time.Duration, f func()) *idleCloser {
	return &idleCloser{d: d, t: time.AfterFunc(d, f)}
}

// begin notes a request that started.
func (ic *idleCloser) begin() {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	ic.open++
	ic.t.Stop()
}

// end notes a request that ended; the clock starts again if it was the
// last.
func (ic *idleCloser) end() {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.open--; ic.open == 0 && !ic.ended {
		ic.t.Reset(ic.d)
	}
}

// stop stops the clock for good.
func (ic *idleCloser) stop() {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	ic.ended = true
	ic.t.Stop()
}
