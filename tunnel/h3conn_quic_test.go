package tunnel

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// These tests talk to the server's datagram reader (dgramMux.run) with a
// bare QUIC connection: no HTTP/3 control stream and no request, which the
// server does not need before it reads datagrams.

// dialRaw opens a QUIC connection with datagrams to ts, closed at cleanup.
func dialRaw(t *testing.T, ts *testServer) *quic.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tlsConf := ts.tls.Clone()
	tlsConf.ServerName = "localhost"
	c, err := quic.DialAddr(ctx, ts.addr, tlsConf, &quic.Config{EnableDatagrams: true})
	if err != nil {
		t.Fatalf("dial %s: %v", ts.addr, err)
	}
	t.Cleanup(func() { c.CloseWithError(0, "") })
	if !c.ConnectionState().SupportsDatagrams.Remote {
		t.Fatal("server does not accept datagrams")
	}
	return c
}

// waitDrops polls the server's drop counter r until it reaches want.
func waitDrops(t *testing.T, s *Server, r dropReason, want uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.counters.drops[r].Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s drops = %d, want %d", r, s.counters.drops[r].Load(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := s.counters.drops[r].Load(); got != want {
		t.Fatalf("%s drops = %d, want %d", r, got, want)
	}
}

// RFC 9297 §2.1: a quarter stream ID above 2^60-1, or one that cannot be
// parsed, is a connection error of type H3_DATAGRAM_ERROR.
func TestMalformedQuarterStreamIDClosesConnection(t *testing.T) {
	ts := startServer(t)
	for _, tt := range []struct {
		name string
		d    []byte
	}{
		{"largest varint", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0}},
		{"2^60", append(quicvarint.Append(nil, maxQuarterStreamID+1), 0)},
		{"truncated varint", []byte{0x80, 0x00}},
		{"empty", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, ts)
			if err := c.SendDatagram(tt.d); err != nil {
				t.Fatalf("SendDatagram(%x): %v", tt.d, err)
			}
			select {
			case <-c.Context().Done():
			case <-time.After(5 * time.Second):
				t.Fatalf("connection still open 5s after datagram %x", tt.d)
			}
			err := context.Cause(c.Context())
			if ae, ok := errors.AsType[*quic.ApplicationError](err); !ok || !ae.Remote || ae.ErrorCode != errCodeH3DatagramError {
				t.Fatalf("connection closed with %v, want a remote application error %#x", err, errCodeH3DatagramError)
			}
		})
	}
	if got := ts.srv.counters.drops[dropUnknownStream].Load(); got != 0 {
		t.Errorf("unknown_stream drops = %d, want 0: malformed datagrams are no drop", got)
	}
	waitCounter(t, "datagram_error connection errors", ts.srv.counters.connErrors[connErrorIndex(http3.ErrCodeDatagramError)].Load, 4)
}

func TestDatagramForUnknownStreamIsDropped(t *testing.T) {
	ts := startServer(t)
	c := dialRaw(t, ts)
	var want uint64
	for _, qsid := range []uint64{
		0,                  // stream 0: the client never opened it
		1,                  // stream 4
		maxQuarterStreamID, // the largest valid quarter stream ID
	} {
		d := append(quicvarint.Append(nil, qsid), 0, 0x45)
		if err := c.SendDatagram(d); err != nil {
			t.Fatalf("SendDatagram(%x): %v", d, err)
		}
		want++
		// One at a time: quic-go may drop datagrams when its queue is
		// full, and the count must be exact.
		waitDrops(t, ts.srv, dropUnknownStream, want)
	}
	if err := context.Cause(c.Context()); err != nil {
		t.Fatalf("connection closed after datagrams for unknown streams: %v", err)
	}
	// The connection is still served and its datagrams still read: a
	// malformed one now closes it.
	if err := c.SendDatagram([]byte{0xc0}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection still open 5s after a malformed datagram")
	}
	if ae, ok := errors.AsType[*quic.ApplicationError](context.Cause(c.Context())); !ok || !ae.Remote || ae.ErrorCode != errCodeH3DatagramError {
		t.Errorf("connection closed with %v, want application error %#x", context.Cause(c.Context()), errCodeH3DatagramError)
	}
}

// TestRequestTimeout: a connection that opens no request within
// RequestTimeout is closed (H3_NO_ERROR) and counted; one whose session is
// up stays open past it.
func TestRequestTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	ts := startServer(t, func(c *ServerConfig) { c.RequestTimeout = timeout })
	idle := dialTest(t, ts.addr, ts.tls)
	busy, err := ts.connect(t, testToken)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	select {
	case <-idle.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("a connection without a request still open after 5 s (RequestTimeout %v)", timeout)
	}
	took := time.Since(start)
	ae, ok := errors.AsType[*quic.ApplicationError](context.Cause(idle.Context()))
	if !ok || !ae.Remote || ae.ErrorCode != quic.ApplicationErrorCode(http3.ErrCodeNoError) {
		t.Errorf("idle connection closed by %v, want the server's H3_NO_ERROR", context.Cause(idle.Context()))
	}
	t.Logf("idle connection closed after %v: %v", took.Round(time.Millisecond), ae)
	if got := ts.srv.counters.idleConns.Load(); got != 1 {
		t.Errorf("idle connections counted: %d, want 1", got)
	}
	time.Sleep(2 * timeout)
	if err := busy.qc.Context().Err(); err != nil {
		t.Errorf("the connection with a session was closed too: %v", context.Cause(busy.qc.Context()))
	}

	// A connection whose only request was refused is closed as well, the
	// timeout after the refusal.
	refused := dialTest(t, ts.addr, ts.tls)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = Connect(ctx, ClientConfig{Conn: refused.Conn, Authority: ts.addr, Token: "not-a-valid-token-at-all"})
	if re, ok := errors.AsType[*RefusedError](err); !ok || re.Status != 401 {
		t.Fatalf("Connect with a wrong token = %v, want a 401 refusal", err)
	}
	start = time.Now()
	select {
	case <-refused.Conn.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("a connection whose request was refused still open after 5 s (RequestTimeout %v)", timeout)
	}
	t.Logf("connection closed %v after its request was refused", time.Since(start).Round(time.Millisecond))
	if got := ts.srv.counters.idleConns.Load(); got != 2 {
		t.Errorf("idle connections counted: %d, want 2", got)
	}
	if err := busy.qc.Context().Err(); err != nil {
		t.Errorf("the connection with a session was closed: %v", context.Cause(busy.qc.Context()))
	}
}
