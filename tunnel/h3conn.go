package tunnel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// Each QUIC connection is served by our own HTTP/3 server side
// (h3server.go), with the accept loops and the datagram receive path in our
// hands:
//
//	AcceptStream ─► serveRequest (requests; then capsules in DATA frames)
//	AcceptUniStream ─► acceptUniStreams: the client's control stream is read here
//	ReceiveDatagram ─► dgramMux.run (one per connection) ─► session / flow
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
	mem, ok := s.budget.forConn(c.RemoteAddr())
	if !ok {
		s.counters.unauthConnsRefused.Add(1)
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

// acceptUniStreams reads the peer's unidirectional streams (RFC 9114
// §6.2) until the connection ends. The control stream's SETTINGS go to
// h.settings (nil: checked and dropped), and a server's GOAWAY to h.goAway
// (nil on the server, where a client's GOAWAY only limits pushes we never
// make, and is only checked); the stream must then stay open, and its end
// closes the connection. The QPACK encoder and decoder streams are read
// and checked (qpackstream.go): at most one of each, critical like the
// control stream. A push stream is refused with pushCode
// (H3_STREAM_CREATION_ERROR from a client, which may not push; H3_ID_ERROR
// from a server, as we send no MAX_PUSH_ID). Reserved and unknown types are
// ignored (§6.2.3). The peer is a server iff pushCode is H3_ID_ERROR.
func acceptUniStreams(c *quic.Conn, pushCode http3.ErrCode, h controlHandlers) {
	var seen uniStreamsSeen
	for {
		str, err := c.AcceptUniStream(context.Background())
		if err != nil {
			return
		}
		go serveUniStream(c, str, &seen, pushCode, h)
	}
}

// controlHandlers take what the peer's control stream says.
type controlHandlers struct {
	settings func(peerSettings)
	goAway   func(next quic.StreamID)
}

// uniStreamsSeen records the critical streams a peer has opened: each may
// be opened once (RFC 9114 §6.2.1, RFC 9204 §4.2).
type uniStreamsSeen struct {
	control, encoder, decoder atomic.Bool
}

func serveUniStream(c *quic.Conn, str *quic.ReceiveStream, seen *uniStreamsSeen, pushCode http3.ErrCode, h controlHandlers) {
	r := bufio.NewReaderSize(str, 512)
	typ, err := quicvarint.Read(r)
	if err != nil {
		return
	}
	closeConn := func(code http3.ErrCode, msg string) {
		c.CloseWithError(quic.ApplicationErrorCode(code), msg)
	}
	// closeOn closes the connection for err if it is a connection error;
	// otherwise (the stream ended or was reset) for the end of a critical
	// stream, unless the connection is ending anyway.
	closeOn := func(err error, what string) {
		if ce, ok := errors.AsType[*connError](err); ok {
			closeConn(ce.code, ce.msg)
			return
		}
		if c.Context().Err() == nil {
			closeConn(http3.ErrCodeClosedCriticalStream, what+" closed")
		}
	}
	switch typ {
	case streamTypeControl:
		if !seen.control.CompareAndSwap(false, true) {
			closeConn(http3.ErrCodeStreamCreationError, "second control stream")
			return
		}
		ps, err := readSettings(r)
		if err != nil {
			closeOn(err, "control stream")
			return
		}
		// RFC 9297 §2.1.1: H3_DATAGRAM=1 on a connection whose peer did
		// not offer QUIC datagrams (max_datagram_frame_size).
		if ps.datagram && !c.ConnectionState().SupportsDatagrams.Remote {
			closeConn(http3.ErrCodeSettingsError, "H3_DATAGRAM without QUIC datagram support")
			return
		}
		if h.settings != nil {
			h.settings(ps)
		}
		closeOn(readControlFrames(r, pushCode == http3.ErrCodeIDError, h.goAway), "control stream")
	case streamTypeQPACKEncoder:
		if !seen.encoder.CompareAndSwap(false, true) {
			closeConn(http3.ErrCodeStreamCreationError, "second QPACK encoder stream")
			return
		}
		closeOn(readQPACKEncoderStream(r), "QPACK encoder stream")
	case streamTypeQPACKDecoder:
		if !seen.decoder.CompareAndSwap(false, true) {
			closeConn(http3.ErrCodeStreamCreationError, "second QPACK decoder stream")
			return
		}
		closeOn(readQPACKDecoderStream(r), "QPACK decoder stream")
	case streamTypePush:
		closeConn(pushCode, "unexpected push stream")
	default:
		str.CancelRead(quic.StreamErrorCode(http3.ErrCodeStreamCreationError))
	}
}

// readControlFrames reads a control stream's frames after SETTINGS until
// it ends. A GOAWAY's ID may only decrease (RFC 9114 §5.2); from a server
// it names a client-initiated bidirectional stream and goes to goAway (nil:
// ignored); from a client it names a push ID and asks nothing of us. A
// frame that has no place on this control stream (MAX_PUSH_ID from a
// server among them), a malformed GOAWAY, or a GOAWAY ID that is not valid
// or rises is a *connError. The rest (MAX_PUSH_ID from a client,
// CANCEL_PUSH, PRIORITY_UPDATE, unknown types) asks nothing of us.
func readControlFrames(r *bufio.Reader, peerIsServer bool, goAway func(quic.StreamID)) error {
	last := uint64(1) << 62
	for {
		typ, err := quicvarint.Read(r)
		if err != nil {
			return err
		}
		l, err := quicvarint.Read(r)
		if err != nil {
			return err
		}
		switch {
		case typ == frameTypeData, typ == frameTypeHeaders, typ == frameTypeSettings, typ == frameTypePushPromise,
			typ == 0x02, typ == 0x06, typ == 0x08, typ == 0x09, typ == frameTypeMaxPushID && peerIsServer:
			return &connError{http3.ErrCodeFrameUnexpected, fmt.Sprintf("frame type %#x on the control stream", typ)}
		case typ == frameTypeGoAway:
			if l == 0 || l > 8 {
				return &connError{http3.ErrCodeFrameError, fmt.Sprintf("GOAWAY frame of %d bytes", l)}
			}
			var b [8]byte
			if _, err := io.ReadFull(r, b[:l]); err != nil {
				return err
			}
			id, n, err := quicvarint.Parse(b[:l])
			if err != nil || n != int(l) {
				return &connError{http3.ErrCodeFrameError, "malformed GOAWAY frame"}
			}
			if (peerIsServer && id%4 != 0) || id > last {
				return &connError{http3.ErrCodeIDError, fmt.Sprintf("GOAWAY names %d after %d", id, last)}
			}
			last = id
			if peerIsServer && goAway != nil {
				goAway(quic.StreamID(id))
			}
		default:
			if err := discard(r, l); err != nil {
				return err
			}
		}
	}
}

// Unidirectional stream types (RFC 9114 §6.2, RFC 9204 §4.2).
const (
	streamTypeControl       = 0x00
	streamTypePush          = 0x01
	streamTypeQPACKEncoder  = 0x02
	streamTypeQPACKDecoder  = 0x03
	maxSettingsFrameLen     = 16 << 10
	settingH3Datagram       = 0x33
	settingExtendedConnect  = 0x08
	settingMaxFieldSection  = 0x06
	frameTypeSettings       = 0x04
	maxQuarterStreamID      = 1<<60 - 1
	errCodeH3DatagramError  = 0x33
	errCodeH3SettingsError  = 0x109
	errCodeH3MissingSetting = 0x10a
)

// peerSettings is what a peer's SETTINGS frame says that we look at.
type peerSettings struct {
	datagram, extendedConnect bool
}

// readSettings reads the first frame of a control stream, which must be
// SETTINGS (RFC 9114 §7.2.4), and checks it: no setting twice, none of the
// HTTP/2 settings HTTP/3 reserves, H3_DATAGRAM and ENABLE_CONNECT_PROTOCOL
// 0 or 1. Unknown settings are ignored. An error that is not a
// *connError is the stream's own (it ended or was reset).
func readSettings(r io.ByteReader) (peerSettings, error) {
	var ps peerSettings
	typ, err := quicvarint.Read(r)
	if err != nil {
		return ps, err
	}
	if typ != frameTypeSettings {
		return ps, &connError{http3.ErrCode(errCodeH3MissingSetting), fmt.Sprintf("first control frame has type %#x, not SETTINGS", typ)}
	}
	l, err := quicvarint.Read(r)
	if err != nil {
		return ps, err
	}
	if l > maxSettingsFrameLen {
		return ps, &connError{http3.ErrCodeExcessiveLoad, fmt.Sprintf("SETTINGS frame of %d bytes", l)}
	}
	buf := make([]byte, l)
	for i := range buf {
		if buf[i], err = r.ReadByte(); err != nil {
			return ps, err
		}
	}
	frameErr := func(format string, args ...any) error {
		return &connError{http3.ErrCode(errCodeH3SettingsError), fmt.Sprintf(format, args...)}
	}
	seen := make(map[uint64]bool)
	for len(buf) > 0 {
		id, n, err := quicvarint.Parse(buf)
		if err != nil {
			return ps, &connError{http3.ErrCodeFrameError, "truncated SETTINGS frame"}
		}
		buf = buf[n:]
		val, n, err := quicvarint.Parse(buf)
		if err != nil {
			return ps, &connError{http3.ErrCodeFrameError, "truncated SETTINGS frame"}
		}
		buf = buf[n:]
		if seen[id] {
			return ps, frameErr("setting %#x sent twice", id)
		}
		seen[id] = true
		switch id {
		case 0x00, 0x02, 0x03, 0x04, 0x05: // HTTP/2's, reserved (RFC 9114 §7.2.4.1)
			return ps, frameErr("reserved setting %#x", id)
		case settingH3Datagram, settingExtendedConnect:
			if val > 1 {
				return ps, frameErr("setting %#x has value %d, want 0 or 1", id, val)
			}
			if id == settingH3Datagram {
				ps.datagram = val == 1
			} else {
				ps.extendedConnect = val == 1
			}
		}
	}
	return ps, nil
}

// datagramSink receives the HTTP datagrams of one request stream.
type datagramSink interface {
	// deliver takes one datagram's payload (context ID first; the slice is
	// the sink's to keep) and reports whether the sink holds packets that
	// wait for flush. It must not block: it runs under the connection's
	// dispatcher lock, and a sink that cannot take d drops and counts it.
	deliver(d []byte) bool
	// flush passes on what deliver held back; called when the
	// connection's datagram queue is empty.
	flush()
}

// dgramMux is the only reader of a connection's QUIC datagrams: it parses
// the quarter stream ID (RFC 9297 §2.1) and hands the payload to the sink
// registered for that stream.
type dgramMux struct {
	conn     *quic.Conn
	counters *counters

	// mu guards the fields below. It is held while a sink's deliver or
	// flush runs, so neither may block (datagramSink).
	mu      sync.Mutex
	sinks   map[quic.StreamID]datagramSink
	pending []datagramSink // sinks holding packets for flush
	early   int            // datagrams held by all earlySinks
}

func newDgramMux(c *quic.Conn, cnt *counters) *dgramMux {
	return &dgramMux{conn: c, counters: cnt, sinks: make(map[quic.StreamID]datagramSink)}
}

// earlyQueueLen is how many datagrams a request stream may receive before
// its handler takes it over (RFC 9298 §5 lets clients send optimistically),
// and earlyConnLen how many all the request streams of a connection may
// hold together. Only a request whose HEADERS have parsed has a queue: a
// datagram for any other stream is dropped (unknown_stream).
const (
	earlyQueueLen = 32
	earlyConnLen  = 64
)

// earlySink holds datagrams of a request whose handler has not registered.
// Those beyond earlyQueueLen, or beyond earlyConnLen on the connection, are
// dropped (queue_full); those still held when the request ends without a
// session or flow are dropped by forget (unknown_stream).
type earlySink struct {
	q [][]byte
	m *dgramMux
}

// deliver is called with m.mu held.
func (e *earlySink) deliver(d []byte) bool {
	if len(e.q) < earlyQueueLen && e.m.early < earlyConnLen {
		e.q = append(e.q, d)
		e.m.early++
	} else {
		e.m.counters.drop(dropQueueFull)
	}
	return false
}
func (e *earlySink) flush() {}

// expect notes a new request stream: its datagrams wait for register.
func (m *dgramMux) expect(id quic.StreamID) {
	m.mu.Lock()
	m.sinks[id] = &earlySink{m: m}
	m.mu.Unlock()
}

// register makes s the receiver of stream id's datagrams, handing it those
// that arrived first.
func (m *dgramMux) register(id quic.StreamID, s datagramSink) {
	m.mu.Lock()
	defer m.mu.Unlock()
	early, _ := m.sinks[id].(*earlySink)
	m.sinks[id] = s
	if early != nil {
		m.early -= len(early.q)
	}
	if early != nil && len(early.q) > 0 {
		for _, d := range early.q {
			s.deliver(d)
		}
		s.flush()
	}
}

// forget stops delivery to stream id. Once it returns the sink is not
// called again.
func (m *dgramMux) forget(id quic.StreamID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.sinks[id]
	if !ok {
		return
	}
	delete(m.sinks, id)
	if e, ok := s.(*earlySink); ok {
		// The request became no session or flow: its early datagrams
		// were for a stream that is none.
		m.counters.drops[dropUnknownStream].Add(uint64(len(e.q)))
		m.early -= len(e.q)
	}
	if i := slices.Index(m.pending, s); i >= 0 {
		m.pending = slices.Delete(m.pending, i, i+1)
	}
}

// run reads datagrams until the connection ends. It waits for the first
// datagram of a burst without the lock, then holds the lock while it
// drains what is queued without blocking, and flushes the sinks when the
// queue is empty: one lock per burst, and batches as large as the burst.
func (m *dgramMux) run() {
	for {
		d, err := m.conn.ReceiveDatagram(context.Background())
		m.mu.Lock()
		ok := true
		for ok && err == nil && d != nil {
			ok = m.handle(d)
			d, err = m.conn.ReceiveDatagram(drainCtx)
		}
		m.flushLocked()
		m.mu.Unlock()
		if !ok || err != nil {
			return
		}
	}
}

// handle parses one datagram's quarter stream ID and passes the payload to
// its sink. A malformed ID closes the connection (RFC 9297 §2.1) and
// returns false. The caller holds m.mu.
func (m *dgramMux) handle(d []byte) bool {
	qsid, n, err := quicvarint.Parse(d)
	if err != nil || qsid > maxQuarterStreamID {
		m.conn.CloseWithError(quic.ApplicationErrorCode(errCodeH3DatagramError), "malformed HTTP datagram")
		return false
	}
	if !m.dispatchLocked(quic.StreamID(qsid*4), d[n:]) {
		m.counters.drop(dropUnknownStream)
	}
	return true
}

// dispatch hands d to the sink of stream id and reports whether there was
// one.
func (m *dgramMux) dispatch(id quic.StreamID, d []byte) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.dispatchLocked(id, d)
}

func (m *dgramMux) dispatchLocked(id quic.StreamID, d []byte) bool {
	s := m.sinks[id]
	if s == nil {
		return false
	}
	if s.deliver(d) && !slices.Contains(m.pending, s) {
		m.pending = append(m.pending, s)
	}
	return true
}

// deliverOne hands one datagram that did not come from the connection's
// queue (a DATAGRAM capsule, RFC 9297 §3.5) to s and flushes s at once.
// Outside m.run's bursts no sink holds packets, so s is not pending.
func (m *dgramMux) deliverOne(s datagramSink, d []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s.deliver(d) {
		s.flush()
	}
}

// flushAll flushes every sink that holds packets.
func (m *dgramMux) flushAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushLocked()
}

func (m *dgramMux) flushLocked() {
	for i, s := range m.pending {
		s.flush()
		m.pending[i] = nil
	}
	m.pending = m.pending[:0]
}
