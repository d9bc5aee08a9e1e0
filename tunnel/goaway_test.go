package tunnel

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
	"github.com/yosida95/uritemplate/v3"
)

// Draining with HTTP/3 GOAWAY (RFC 9114 §5.2): Shutdown announces the first
// request stream it will not process, keeps serving the sessions it has
// until they end or the deadline passes, and rejects later requests.

// serverControl reads the server's control stream on c up to its SETTINGS
// and returns a reader positioned after them.
func serverControl(t *testing.T, c *quic.Conn) *bufio.Reader {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	str, err := c.AcceptUniStream(ctx)
	if err != nil {
		t.Fatalf("accept the server's control stream: %v", err)
	}
	str.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(str)
	typ, err := quicvarint.Read(r)
	if err != nil || typ != streamTypeControl {
		t.Fatalf("server's first unidirectional stream has type %#x (%v), want the control stream", typ, err)
	}
	ps, err := readSettings(r)
	if err != nil {
		t.Fatalf("server's SETTINGS: %v", err)
	}
	if !ps.datagram || !ps.extendedConnect {
		t.Fatalf("server's SETTINGS %+v lack H3_DATAGRAM or ENABLE_CONNECT_PROTOCOL", ps)
	}
	return r
}

func TestShutdownSendsGoAway(t *testing.T) {
	ts := startServer(t)
	h := dialH3(t, ts)
	ctrl := serverControl(t, h.conn)
	rs := h.session()
	before := countsOf(ts.srv)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	shutdown := make(chan error, 1)
	start := time.Now()
	go func() { shutdown <- ts.srv.Shutdown(ctx) }()

	id := readGoAwayFrom(t, ctrl)
	if want := rs.str.StreamID() + 4; id != want {
		t.Errorf("GOAWAY names stream %d, want %d (the one after the session's)", id, want)
	}
	// The session keeps carrying packets while the server drains.
	rs.passes()
	// A request after the GOAWAY is not processed.
	late := h.request(connectIPFields(ts.addr, testToken))
	if code := late.resetCode(); code != quic.StreamErrorCode(http3.ErrCodeRequestRejected) {
		t.Errorf("request after GOAWAY reset with %#x, want H3_REQUEST_REJECTED", code)
	}
	if got := ts.srv.counters.refused[refuseShuttingDown].Load(); got != before.refused[refuseShuttingDown]+1 {
		t.Errorf("refused{shutting_down} = %d, want %d", got, before.refused[refuseShuttingDown]+1)
	}
	select {
	case err := <-shutdown:
		t.Fatalf("Shutdown returned %v with a session up", err)
	default:
	}
	// The client moves on: it ends its session, and the server is done
	// before its deadline, closing the connection cleanly.
	rs.str.Close()
	select {
	case err := <-shutdown:
		if err != nil {
			t.Errorf("Shutdown = %v, want nil (every session ended before the deadline)", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown still waiting 5 s after the last session ended")
	}
	t.Logf("drained in %v", time.Since(start).Round(time.Millisecond))
	select {
	case <-h.conn.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection still open after Shutdown")
	}
	ae, ok := errors.AsType[*quic.ApplicationError](context.Cause(h.conn.Context()))
	if !ok || !ae.Remote || ae.ErrorCode != quic.ApplicationErrorCode(http3.ErrCodeNoError) {
		t.Errorf("connection closed with %v, want H3_NO_ERROR from the server", context.Cause(h.conn.Context()))
	}
}

// readGoAwayFrom reads frames of the server's control stream until a
// GOAWAY and returns its stream ID.
func readGoAwayFrom(t *testing.T, r *bufio.Reader) quic.StreamID {
	t.Helper()
	for {
		typ, err := quicvarint.Read(r)
		if err != nil {
			t.Fatalf("server's control stream: %v", err)
		}
		l, err := quicvarint.Read(r)
		if err != nil {
			t.Fatalf("server's control stream: %v", err)
		}
		b := make([]byte, l)
		if _, err := io.ReadFull(r, b); err != nil {
			t.Fatalf("server's control stream: %v", err)
		}
		if typ != frameTypeGoAway {
			continue
		}
		id, n, err := quicvarint.Parse(b)
		if err != nil || n != len(b) {
			t.Fatalf("malformed GOAWAY %x", b)
		}
		return quic.StreamID(id)
	}
}

// TestShutdownDeadlineEndsSessions: a client that stays is cut off when the
// drain deadline passes, not before; our client hears the GOAWAY at once.
func TestShutdownDeadlineEndsSessions(t *testing.T) {
	ts := startServer(t)
	tc, err := ts.connect(t, testToken)
	if err != nil {
		t.Fatal(err)
	}
	const drain = 700 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	start := time.Now()
	shutdown := make(chan error, 1)
	go func() { shutdown <- ts.srv.Shutdown(ctx) }()
	select {
	case <-tc.c.GoingAway():
		t.Logf("client heard GOAWAY after %v", time.Since(start).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("client did not hear the GOAWAY")
	}
	select {
	case err := <-tc.runErr:
		t.Fatalf("session ended %v into a %v drain: %v", time.Since(start).Round(time.Millisecond), drain, err)
	case <-time.After(drain / 2):
	}
	select {
	case err := <-tc.runErr:
		if !errors.Is(err, ErrSessionClosed) {
			t.Errorf("Run = %v, want ErrSessionClosed", err)
		}
		tc.runErr <- err
		if took := time.Since(start); took < drain {
			t.Errorf("session ended %v after Shutdown, before the %v deadline", took, drain)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("session still up 5 s after the drain deadline")
	}
	if err := <-shutdown; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want the deadline's error", err)
	}
}

// TestGoAwayInterop: quic-go's HTTP/3 client (under connect-ip-go) reads
// our GOAWAY: its session carries on, and it opens no new request on the
// draining connection.
func TestGoAwayInterop(t *testing.T) {
	ts := startServer(t)
	qc := dialTest(t, ts.addr, ts.tls)
	h3c := (&http3.Transport{EnableDatagrams: true}).NewClientConn(qc.Conn)
	tmpl := uritemplate.MustNew("https://" + ts.addr + ipPath(ipScope{}))
	dial := func() (*connectip.Conn, *http.Response, error) {
		req, err := connectip.NewRequest(context.Background(), tmpl)
		if err != nil {
			t.Fatal(err)
		}
		req.Header().Set("Authorization", "Bearer "+testToken)
		return connectip.NewClientConn(h3c).Dial(req)
	}
	conn, _, err := dial()
	if err != nil {
		t.Fatalf("connect-ip-go Dial: %v", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go ts.srv.Shutdown(ctx)
	// A request the server accepted before its GOAWAY is still served
	// (RFC 9114 §5.2): dial only once the GOAWAY is out.
	waitFor(t, "the server's GOAWAY", 5*time.Second, func() bool {
		hc := ts.srv.anyConn()
		if hc == nil {
			return false
		}
		hc.mu.Lock()
		defer hc.mu.Unlock()
		return hc.goingAway
	})
	// Requests that cross the GOAWAY are rejected by the server
	// (H3_REQUEST_REJECTED); once quic-go has read it, it sends none.
	var last error
	waitFor(t, "quic-go's client to refuse new requests after GOAWAY", 5*time.Second, func() bool {
		c, _, err := dial()
		if err == nil {
			c.Close()
			t.Fatal("a new session opened on a draining connection")
		}
		last = err
		return strings.Contains(err.Error(), "graceful shutdown")
	})
	t.Logf("last refusal: %v", last)
	if ts.srv.Sessions() != 1 {
		t.Errorf("sessions = %d during the drain, want 1 (connect-ip-go's first)", ts.srv.Sessions())
	}
	if err := qc.Conn.Context().Err(); err != nil {
		t.Fatalf("connection closed during the drain: %v", context.Cause(qc.Conn.Context()))
	}
}

// TestUDPForwarderMovesOnGoAway: when its server drains, masque udp keeps
// its open flows there and opens new ones on a new connection (here to a
// second server, as a load balancer would pick).
func TestUDPForwarderMovesOnGoAway(t *testing.T) {
	checkLeaks(t)
	draining := startUDPServer(t, UDPConfig{})
	other := startUDPServer(t, UDPConfig{})
	echo := startEcho(t, nil)
	f := startForwarder(t, draining.dial(t), UDPForwarderConfig{Authority: draining.addr,
		Redial:   func(ctx context.Context) (*quic.Conn, error) { return other.dial(t).Conn, nil },
		Forwards: []UDPForward{{Listen: "127.0.0.1:0", Target: echo.String()}}})
	old := dialLocal(t, f.ListenAddrs()[0])
	if got := exchange(t, old, []byte("before")); string(got) != "before" {
		t.Fatalf("echo = %q", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	shutdown := make(chan error, 1)
	go func() { shutdown <- draining.srv.Shutdown(ctx) }()
	defer func() { cancel(); <-shutdown }()
	waitFor(t, "the server to send GOAWAY", 5*time.Second, func() bool {
		draining.srv.mu.Lock()
		defer draining.srv.mu.Unlock()
		for _, hc := range draining.srv.conns {
			hc.mu.Lock()
			g := hc.goingAway
			hc.mu.Unlock()
			if !g {
				return false
			}
		}
		return true
	})
	time.Sleep(50 * time.Millisecond) // let the frame arrive
	fresh := dialLocal(t, f.ListenAddrs()[0])
	if got := exchange(t, fresh, []byte("new flow")); string(got) != "new flow" {
		t.Fatalf("echo on a new flow = %q", got)
	}
	if got := exchange(t, old, []byte("old flow")); string(got) != "old flow" {
		t.Fatalf("echo on the draining server's flow = %q", got)
	}
	if st := f.Stats(); st.Redials != 1 {
		t.Errorf("redials = %d, want 1", st.Redials)
	}
	if n, m := draining.srv.counters.udp.flows.Load(), other.srv.counters.udp.flows.Load(); n != 1 || m != 1 {
		t.Errorf("flows: %d on the draining server, %d on the other; want 1 and 1", n, m)
	}
}

// TestControlFrameOnSessionStreamClosesConnection: a SETTINGS frame among
// a session's capsules is a connection error H3_FRAME_UNEXPECTED (RFC 9114
// §7.2.4).
func TestControlFrameOnSessionStreamClosesConnection(t *testing.T) {
	ts := startServer(t)
	h := dialH3(t, ts)
	rs := h.session()
	if _, err := rs.str.Write(appendFrame(nil, frameTypeSettings, nil)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.conn.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection still open 5 s after SETTINGS on a request stream")
	}
	ae, ok := errors.AsType[*quic.ApplicationError](context.Cause(h.conn.Context()))
	if !ok || !ae.Remote || ae.ErrorCode != quic.ApplicationErrorCode(http3.ErrCodeFrameUnexpected) {
		t.Fatalf("connection closed with %v, want H3_FRAME_UNEXPECTED from the server", context.Cause(h.conn.Context()))
	}
}
