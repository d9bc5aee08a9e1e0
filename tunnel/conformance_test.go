package tunnel

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// RFC 9114 / 9204 / 9297 rules that end the connection, and the bounds a
// peer meets before its requests have parsed, over real QUIC with the
// hand-driven client of h3raw_test.go.

// waitClosed waits for c to be closed by the server and checks the code
// (one of codes).
func waitClosed(t *testing.T, c *quic.Conn, code http3.ErrCode, within time.Duration, or ...http3.ErrCode) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-c.Context().Done():
	case <-time.After(within):
		t.Fatalf("connection still open after %v, want it closed with %v", within, code)
	}
	ae, ok := errors.AsType[*quic.ApplicationError](context.Cause(c.Context()))
	if !ok || !ae.Remote || !slices.Contains(append(or, code), http3.ErrCode(ae.ErrorCode)) {
		t.Fatalf("connection closed with %v, want %v from the server", context.Cause(c.Context()), append(or, code))
	}
	return time.Since(start)
}

// RFC 9204 §2.2.3: a field section that does not decode is a connection
// error QPACK_DECOMPRESSION_FAILED, not the stream's.
func TestUndecodableHeadersCloseConnection(t *testing.T) {
	ts := startServer(t)
	for name, block := range map[string][]byte{
		"a reference to a dynamic table entry": {0x00, 0x00, 0x80},
		"a Required Insert Count other than 0": {0x05, 0x00, 0xd1},
	} {
		t.Run(name, func(t *testing.T) {
			i := connErrorIndex(http3.ErrCodeQPACKDecompressionFailed)
			before := ts.srv.counters.connErrors[i].Load()
			h := dialH3(t, ts)
			h.open(appendFrame(nil, frameTypeHeaders, block))
			waitClosed(t, h.conn, http3.ErrCodeQPACKDecompressionFailed, 5*time.Second)
			waitCounter(t, "connection_errors{qpack_decompression_failed}", ts.srv.counters.connErrors[i].Load, before+1)
		})
	}
	dialH3(t, ts).session().passes()
}

// The QPACK instructions a zero-capacity table allows (Set Dynamic Table
// Capacity 0, Stream Cancellation) and unknown frame types on a request
// stream, before HEADERS and between capsules (RFC 9114 §9), leave the
// connection and its session working.
func TestBenignStreamsAndFramesAreAccepted(t *testing.T) {
	ts := startServer(t)
	h := dialH3(t, ts)
	for _, b := range [][]byte{{streamTypeQPACKEncoder, 0x20}, {streamTypeQPACKDecoder, 0x44}} {
		s, err := h.conn.OpenUniStream()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	grease := func(n uint64) []byte { return appendFrame(nil, 0x1f*n+0x21, []byte("grease")) }
	s := h.open(slices.Concat(grease(1), grease(2), headersFrame(t, connectIPFields(ts.addr, testToken))))
	if got := s.status(); got != "200" {
		t.Fatalf("request after unknown frames: status %s, want 200", got)
	}
	// An ADDRESS_REQUEST split by unknown frames is still answered.
	req := appendAddresses(nil, capsuleAddressRequest, []addressEntry{{reqID: 1, prefix: netip.MustParsePrefix("100.64.0.77/32")}})
	b := slices.Concat(appendFrame(nil, frameTypeData, req[:3]), grease(3), appendFrame(nil, frameTypeData, req[3:]))
	if _, err := s.str.Write(b); err != nil {
		t.Fatal(err)
	}
	p := http3.NewCapsuleParser(s.data)
	for {
		rs := &rawSession{rawStream: s}
		typ, c := rs.nextCapsule(p)
		if typ != capsuleAddressAssign {
			continue
		}
		as, err := parseAddresses(c)
		if err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(as, func(e addressEntry) bool { return e.reqID == 1 }) {
			break
		}
	}
	time.Sleep(100 * time.Millisecond)
	if err := h.conn.Context().Err(); err != nil {
		t.Fatalf("connection closed: %v", context.Cause(h.conn.Context()))
	}
	h.session().passes()
}

// RFC 9114 §4.1: trailers end a request's body; a DATA (or HEADERS) frame
// after them is H3_FRAME_UNEXPECTED on the connection. Trailers followed
// by the stream's end close the session cleanly.
func TestTrailersOnASession(t *testing.T) {
	ts := startServer(t)
	trailers := headersFrame(t, nil)

	h := dialH3(t, ts)
	rs := h.session()
	if _, err := rs.str.Write(slices.Concat(trailers)); err != nil {
		t.Fatal(err)
	}
	rs.str.Close()
	waitFor(t, "the session's end", 5*time.Second, func() bool { return ts.srv.Sessions() == 0 })
	h.session().passes() // the connection is still good

	i := connErrorIndex(http3.ErrCodeFrameUnexpected)
	before := ts.srv.counters.connErrors[i].Load()
	h2 := dialH3(t, ts)
	rs2 := h2.session()
	if _, err := rs2.str.Write(slices.Concat(trailers, appendFrame(nil, frameTypeData, []byte{0x00}))); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, h2.conn, http3.ErrCodeFrameUnexpected, 5*time.Second)
	waitCounter(t, "connection_errors{frame_unexpected}", ts.srv.counters.connErrors[i].Load, before+1)
}

// RFC 9297 §2.1.1: H3_DATAGRAM=1 from a peer that did not offer QUIC
// datagrams is H3_SETTINGS_ERROR.
func TestH3DatagramWithoutQUICDatagrams(t *testing.T) {
	ts := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tlsConf := ts.tls.Clone()
	tlsConf.ServerName = "localhost"
	c, err := quic.DialAddr(ctx, ts.addr, tlsConf, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseWithError(0, "")
	ctrl, err := c.OpenUniStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.Write(append([]byte{streamTypeControl}, settingsFrame(settingH3Datagram, 1)...)); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, c, http3.ErrCodeSettingsError, 5*time.Second)
}

// RFC 9297 §2.1.1: the server sends no HTTP datagram before the peer's
// SETTINGS say H3_DATAGRAM=1. A request that overtakes the control stream
// waits for it; one from a peer whose SETTINGS do not enable datagrams
// gets 400 and no session; one from a peer that sends no SETTINGS within
// the request timeout ends the connection with H3_MISSING_SETTINGS.
func TestSessionsWaitForSettings(t *testing.T) {
	ts := startServer(t, func(c *ServerConfig) { c.RequestTimeout = time.Second })
	h := &rawH3{t: t, ts: ts, conn: dialRaw(t, ts)}
	s := h.request(connectIPFields(ts.addr, testToken))
	time.Sleep(200 * time.Millisecond)
	if n := ts.srv.Sessions(); n != 0 {
		t.Fatalf("%d sessions before the peer's SETTINGS, want 0", n)
	}
	ctrl, err := h.conn.OpenUniStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.Write(append([]byte{streamTypeControl}, settingsFrame(settingH3Datagram, 1)...)); err != nil {
		t.Fatal(err)
	}
	if got := s.status(); got != "200" {
		t.Fatalf("status after SETTINGS %s, want 200", got)
	}

	before := ts.srv.counters.unrouted[unroutedNoDatagrams].Load()
	h2 := &rawH3{t: t, ts: ts, conn: dialRaw(t, ts)}
	ctrl2, err := h2.conn.OpenUniStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl2.Write(append([]byte{streamTypeControl}, settingsFrame(settingExtendedConnect, 1)...)); err != nil {
		t.Fatal(err)
	}
	if got := h2.request(connectIPFields(ts.addr, testToken)).status(); got != "400" {
		t.Fatalf("status without H3_DATAGRAM %s, want 400", got)
	}
	waitCounter(t, "unrouted{no_h3_datagram}", ts.srv.counters.unrouted[unroutedNoDatagrams].Load, before+1)

	h3 := &rawH3{t: t, ts: ts, conn: dialRaw(t, ts)}
	h3.request(connectIPFields(ts.addr, testToken))
	// The request timeout runs for the connection and for the wait alike:
	// whichever ends it first.
	waitClosed(t, h3.conn, http3.ErrCodeMissingSettings, 2*time.Second, http3.ErrCodeNoError)
}

// A request stream whose HEADERS never complete is not a request: it keeps
// no connection open, the stream is reset at the request timeout, and the
// connection is closed within it.
func TestUnparsedRequestsDoNotHoldConnections(t *testing.T) {
	const timeout = 500 * time.Millisecond
	ts := startServer(t, func(c *ServerConfig) { c.RequestTimeout = timeout })
	h := dialH3(t, ts)
	before := ts.srv.counters.unrouted[unroutedHeadersTimeout].Load()
	// HEADERS announcing 16,383 bytes, 64 delivered.
	hdr := quicvarint.Append(quicvarint.Append(nil, frameTypeHeaders), 16383)
	var streams []*rawStream
	for range 4 {
		streams = append(streams, h.open(append(hdr, make([]byte, 64)...)))
	}
	took := waitClosed(t, h.conn, http3.ErrCodeNoError, timeout+time.Second)
	t.Logf("connection with 4 unparsed requests closed after %v (request timeout %v)", took, timeout)
	if got := ts.srv.counters.unrouted[unroutedHeadersTimeout].Load() - before; got > 4 {
		t.Errorf("headers_timeout +%d, want at most 4", got)
	}
	if got := ts.srv.budget.inUse(sourceKey(netip.MustParseAddr("127.0.0.1"))); got != 0 {
		waitFor(t, "the header budget's return", 5*time.Second, func() bool { return ts.srv.budget.inUse(sourceKey(netip.MustParseAddr("127.0.0.1"))) == 0 })
	}
	_ = streams
}

// The header bytes of unparsed requests are bounded per connection: a
// stream that would take the connection over connHeaderBudget is reset
// with H3_EXCESSIVE_LOAD and counted; the others go on.
func TestHeaderBudgetPerConnection(t *testing.T) {
	ts := startServer(t)
	h := dialH3(t, ts)
	before := ts.srv.counters.unrouted[unroutedMemoryConn].Load()
	// Each announces 16,383 bytes and delivers all but one: its buffer
	// has grown to the full 16,383 bytes. Four fit in 64 KiB, the fifth
	// does not.
	hdr := quicvarint.Append(quicvarint.Append(nil, frameTypeHeaders), 16383)
	for i := range 4 {
		h.open(append(hdr, make([]byte, 16382)...))
		key := sourceKey(netip.MustParseAddr("127.0.0.1"))
		waitFor(t, "the header budget", 5*time.Second, func() bool { return ts.srv.budget.inUse(key) >= (i+1)*16383 })
	}
	s := h.open(append(hdr, make([]byte, 600)...))
	if got := s.resetCode(); got != quic.StreamErrorCode(http3.ErrCodeExcessiveLoad) {
		t.Errorf("fifth stream reset with %#x, want H3_EXCESSIVE_LOAD", got)
	}
	waitCounter(t, "unrouted{memory_conn}", ts.srv.counters.unrouted[unroutedMemoryConn].Load, before+1)
	// Another connection from the same source has a budget of its own.
	dialH3(t, ts).session().passes()
}

// At most maxUnparsedRequests streams of a connection are read at once;
// the next waits, and a parsed request needs no slot.
func TestUnparsedRequestsPerConnection(t *testing.T) {
	ts := startServer(t)
	h := dialH3(t, ts)
	hdr := quicvarint.Append(quicvarint.Append(nil, frameTypeHeaders), 100)
	for range maxUnparsedRequests {
		h.open(append(hdr, 0))
	}
	waitFor(t, "the slots to fill", 5*time.Second, func() bool {
		hc := ts.srv.anyConn()
		return hc != nil && len(hc.unparsed) == maxUnparsedRequests
	})
	s := h.request(connectIPFields(ts.addr, testToken))
	s.str.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := s.r.Peek(1); err == nil {
		t.Fatal("a ninth request was answered while 8 were unparsed")
	}
}

// anyConn returns one served connection, or nil.
func (s *Server) anyConn() *h3conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, hc := range s.conns {
		return hc
	}
	return nil
}

// A session whose TUN writes are stuck holds its own batches and drops the
// rest (queue_full); the connection's datagram dispatcher goes on, so a
// new request on the same connection is still served and the other
// session's datagrams still reach its queue.
func TestStuckSessionDoesNotStallItsConnection(t *testing.T) {
	ts := startServer(t)
	t.Cleanup(func() {
		// Unblock the TUN before the server's cleanup waits for its writers.
		for {
			select {
			case <-ts.dev.Inbound:
				continue
			case <-time.After(200 * time.Millisecond):
			}
			return
		}
	})
	h := dialH3(t, ts)
	a := h.session()
	before := ts.srv.counters.drops[dropQueueFull].Load()
	// Nobody reads the server TUN: a's writer blocks on its first packet.
	pkt := append([]byte{0}, udp4(a.v4, netip.MustParseAddr("198.18.2.2"), 1, 2, make([]byte, 32))...)
	// One at a time, so that each makes a batch of its own (the
	// dispatcher flushes when quic-go's queue is empty): after rxBatches
	// of them no batch is free.
	for range 4 * rxBatches {
		a.sendDatagram(pkt)
		time.Sleep(2 * time.Millisecond)
	}
	waitFor(t, "queue_full drops", 5*time.Second, func() bool { return ts.srv.counters.drops[dropQueueFull].Load() > before })
	done := make(chan *rawSession, 1)
	go func() {
		s := h.request(connectIPFields(ts.addr, testToken))
		if s.status() == "200" {
			done <- &rawSession{rawStream: s}
			return
		}
		done <- nil
	}()
	select {
	case b := <-done:
		if b == nil {
			t.Fatal("second session refused")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a second request on the connection was not answered while a session's TUN writes were stuck")
	}
}

// With the unauthenticated connections of all sources at their limit, a
// new connection ends the oldest unauthenticated one with
// H3_EXCESSIVE_LOAD, and one that has authenticated is left alone.
func TestOldestUnauthenticatedConnectionIsEvicted(t *testing.T) {
	ts := startServer(t)
	ts.srv.budget.mu.Lock()
	ts.srv.budget.maxUnauth = 2
	ts.srv.budget.mu.Unlock()
	authed := dialH3(t, ts)
	authed.session() // authenticated: no longer counted
	first := dialH3(t, ts)
	waitFor(t, "the first connection to be served", 5*time.Second, func() bool { return ts.srv.budget.unauthLen() == 1 })
	second := dialH3(t, ts)
	waitFor(t, "the second connection to be served", 5*time.Second, func() bool { return ts.srv.budget.unauthLen() == 2 })
	dialH3(t, ts)
	waitClosed(t, first.conn, http3.ErrCodeExcessiveLoad, 5*time.Second)
	waitCounter(t, "unauthenticated connections evicted", ts.srv.counters.unauthClosed[1].Load, 1)
	if err := second.conn.Context().Err(); err != nil {
		t.Errorf("second connection closed: %v", context.Cause(second.conn.Context()))
	}
	if err := authed.conn.Context().Err(); err != nil {
		t.Errorf("authenticated connection closed: %v", context.Cause(authed.conn.Context()))
	}
}
