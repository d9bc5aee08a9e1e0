package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// The server's side of HTTP/3 (RFC 9114) is ours: the request streams, the
// response header and the DATA frames that carry the capsules, and our
// control stream. Why: the control stream is the only place a GOAWAY can go
// (§5.2), and http3.RawServerConn keeps it to itself, so a server built on
// it cannot drain. What is left to libraries: QPACK (quic-go/qpack, static
// table only, as http3 does), request semantics (connect-ip-go and
// masque-go parse the *http.Request), and everything on the client side.
//
// We serve extended CONNECT requests that live as long as their session, so
// the request layer is small: no request bodies, no trailers of interest,
// no content coding. A request stream is:
//
//	HEADERS ─► parseRequest ─► handler ─► response HEADERS ─► h3stream (DATA frames both ways)

// HTTP/3 frame types (RFC 9114 §7.2).
const (
	frameTypeData        = 0x00
	frameTypeHeaders     = 0x01
	frameTypeCancelPush  = 0x03
	frameTypePushPromise = 0x05
	frameTypeGoAway      = 0x07
	frameTypeMaxPushID   = 0x0d
)

// openControlStream opens our control stream and sends SETTINGS: field
// sections up to maxHeaderBytes, extended CONNECT (RFC 9220) and HTTP
// datagrams (RFC 9297).
func openControlStream(c *quic.Conn) (*quic.SendStream, error) {
	str, err := c.OpenUniStream()
	if err != nil {
		return nil, err
	}
	var settings []byte
	for _, s := range [][2]uint64{
		{settingMaxFieldSection, maxHeaderBytes},
		{settingExtendedConnect, 1},
		{settingH3Datagram, 1},
	} {
		settings = quicvarint.Append(settings, s[0])
		settings = quicvarint.Append(settings, s[1])
	}
	b := quicvarint.Append(nil, streamTypeControl)
	b = appendFrame(b, frameTypeSettings, settings)
	if _, err := str.Write(b); err != nil {
		return nil, err
	}
	return str, nil
}

// appendFrame appends an HTTP/3 frame of type typ with payload p.
func appendFrame(b []byte, typ uint64, p []byte) []byte {
	b = quicvarint.Append(b, typ)
	b = quicvarint.Append(b, uint64(len(p)))
	return append(b, p...)
}

// goAwayFrame returns a GOAWAY frame naming the first request stream the
// server will not process (RFC 9114 §5.2, §7.2.6).
func goAwayFrame(next quic.StreamID) []byte {
	return appendFrame(nil, frameTypeGoAway, quicvarint.Append(nil, uint64(next)))
}

// serveRequest reads the request on str and hands it to handler. The
// HEADERS must arrive within the request timeout and fit the connection's
// header budget. Once they have parsed and the peer's SETTINGS are known,
// parsed is called, and then the handler. It returns why the request
// reached no handler, or unroutedNone.
func (s *Server) serveRequest(hc *h3conn, str *quic.Stream, handler http.Handler, parsed func()) unrouted {
	deadline := time.Now().Add(s.cfg.RequestTimeout)
	str.SetReadDeadline(deadline)
	reset := func(code http3.ErrCode) {
		str.CancelRead(quic.StreamErrorCode(code))
		str.CancelWrite(quic.StreamErrorCode(code))
	}
	br := bufio.NewReaderSize(str, 512)
	reserved := 0
	block, err := readRequestHeaders(br, maxHeaderBytes, func(n int) error {
		if err := hc.mem.reserve(n); err != nil {
			return err
		}
		reserved += n
		return nil
	})
	var req *http.Request
	if err == nil {
		req, err = parseRequest(block, maxHeaderBytes)
	}
	hc.mem.release(reserved)
	block = nil
	if err != nil {
		if ce, ok := errors.AsType[*connError](err); ok {
			hc.conn.CloseWithError(quic.ApplicationErrorCode(ce.code), ce.msg)
			return unroutedHeaders
		}
		switch {
		case errors.Is(err, errConnBudget), errors.Is(err, errSourceBudget):
			s.log.Debug("bad request", "remote_addr", hc.conn.RemoteAddr(), "err", err)
			reset(http3.ErrCodeExcessiveLoad)
			if errors.Is(err, errConnBudget) {
				return unroutedMemoryConn
			}
			return unroutedMemorySource
		case errors.Is(err, os.ErrDeadlineExceeded):
			reset(http3.ErrCodeRequestIncomplete)
			return unroutedHeadersTimeout
		}
		if re, ok := errors.AsType[*requestError](err); ok {
			s.log.Debug("bad request", "remote_addr", hc.conn.RemoteAddr(), "err", re.msg)
			if re.tooLarge {
				// Stop the client sending and answer 431 (RFC 9114 §4.2.2).
				str.CancelRead(quic.StreamErrorCode(re.code))
				w := newH3Response(str, nil)
				w.WriteHeader(http.StatusRequestHeaderFieldsTooLarge)
				str.Close()
				return unroutedHeaders
			}
			reset(re.code)
			return unroutedHeaders
		}
		// The stream was reset or the connection ended.
		reset(http3.ErrCodeRequestIncomplete)
		return unroutedHeaders
	}
	str.SetReadDeadline(time.Time{})
	// A MASQUE session needs HTTP datagrams, and we may send none before
	// the peer's SETTINGS say H3_DATAGRAM=1 (RFC 9297 §2.1.1). SETTINGS
	// come first on the peer's control stream, but that stream may be
	// overtaken by a request: wait for them, within the same deadline.
	ps, ok := hc.waitSettings(deadline)
	if !ok {
		if hc.conn.Context().Err() == nil {
			hc.conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeMissingSettings), "no SETTINGS before the request timeout")
		}
		return unroutedNoSettings
	}
	if req.Method == http.MethodConnect && req.Proto != "HTTP/3.0" && !ps.datagram {
		s.log.Debug("bad request", "remote_addr", hc.conn.RemoteAddr(), "err", "extended CONNECT without H3_DATAGRAM")
		str.CancelRead(quic.StreamErrorCode(http3.ErrCodeNoError))
		w := newH3Response(str, nil)
		w.WriteHeader(http.StatusBadRequest)
		str.Close()
		return unroutedNoDatagrams
	}
	parsed()
	state := hc.conn.ConnectionState().TLS
	req.TLS = &state
	req.RemoteAddr = hc.conn.RemoteAddr().String()
	ctx, cancel := context.WithCancel(context.WithValue(hc.conn.Context(), connKey{}, hc.conn))
	defer cancel()
	stop := context.AfterFunc(str.Context(), cancel)
	defer stop()
	req = req.WithContext(ctx)

	w := newH3Response(str, br)
	w.conn = hc.conn
	panicked := true
	func() {
		defer func() {
			if p := recover(); p != nil && p != http.ErrAbortHandler {
				s.log.Error("panic serving a request", "err", p)
			}
		}()
		handler.ServeHTTP(w, req)
		panicked = false
	}()
	if w.taken {
		return unroutedNone
	}
	if panicked {
		reset(http3.ErrCodeInternalError)
		return unroutedNone
	}
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	// A request without a session: we read no more, and the FIN ends the
	// response.
	str.CancelRead(quic.StreamErrorCode(http3.ErrCodeNoError))
	str.Close()
	return unroutedNone
}

// h3Response is the http.ResponseWriter of serveRequest. The handler of a
// CONNECT request that becomes a session takes the stream over with
// stream() after its 2xx.
type h3Response struct {
	conn   *quic.Conn
	str    *quic.Stream
	br     *bufio.Reader // what the request's reader holds beyond HEADERS
	header http.Header
	wrote  bool
	taken  bool
	hs     *h3stream
}

func newH3Response(str *quic.Stream, br *bufio.Reader) *h3Response {
	return &h3Response{str: str, br: br, header: make(http.Header)}
}

func (w *h3Response) Header() http.Header { return w.header }

// WriteHeader sends the response's HEADERS frame. Informational codes are
// not supported (none of our handlers sends one).
func (w *h3Response) WriteHeader(status int) {
	if w.wrote {
		return
	}
	w.wrote = true
	var block bytes.Buffer
	enc := qpack.NewEncoder(&block)
	enc.WriteField(qpack.HeaderField{Name: ":status", Value: strconv.Itoa(status)})
	for k, vs := range w.header {
		name := strings.ToLower(k)
		if connectionSpecific[name] {
			continue
		}
		for _, v := range vs {
			enc.WriteField(qpack.HeaderField{Name: name, Value: v})
		}
	}
	w.str.Write(appendFrame(nil, frameTypeHeaders, block.Bytes()))
}

// Write sends b in a DATA frame, after a 200 if no status was sent.
func (w *h3Response) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if _, err := w.str.Write(appendFrame(nil, frameTypeData, b)); err != nil {
		return 0, err
	}
	return len(b), nil
}

// stream takes the request stream over: the response header is sent (200
// unless WriteHeader said otherwise) and the stream's body is the caller's
// from here on, as DATA frames.
func (w *h3Response) stream() *h3stream {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if w.hs == nil {
		w.taken = true
		w.hs = &h3stream{conn: w.conn, str: w.str, r: w.br}
	}
	return w.hs
}

// streamOf returns the request stream behind w, taken over.
func streamOf(w http.ResponseWriter) *h3stream {
	return w.(*h3Response).stream()
}

// h3stream is a request stream's body after the response header: HTTP/3
// DATA frames both ways (RFC 9114 §4.1), which carry the capsule protocol
// (RFC 9297 §3.2), and the HTTP datagrams of the stream (§2.1).
type h3stream struct {
	conn *quic.Conn
	str  *quic.Stream
	r    *bufio.Reader // reads str

	left    uint64 // of the DATA frame being read
	trailed bool   // trailers read: the body is over, only the stream's end may follow

	wmu  sync.Mutex // guards whdr
	whdr [16]byte

	dmu  sync.Mutex // guards dbuf
	dbuf []byte
}

// Read reads the payload of the client's DATA frames. Unknown frame types
// are skipped; a HEADERS frame (trailers) ends the body, and the stream
// must then end: a DATA or HEADERS frame after trailers (RFC 9114 §4.1), or
// a frame that has no place on a request stream, closes the connection
// (H3_FRAME_UNEXPECTED).
func (s *h3stream) Read(b []byte) (int, error) {
	for s.left == 0 {
		typ, err := quicvarint.Read(s.r)
		if err != nil {
			return 0, err
		}
		l, err := quicvarint.Read(s.r)
		if err != nil {
			return 0, unexpectedEOF(err)
		}
		switch {
		case s.trailed && (typ == frameTypeData || typ == frameTypeHeaders), forbiddenOnRequestStream(typ):
			msg := fmt.Sprintf("frame type %#x on a request stream", typ)
			if s.trailed {
				msg = fmt.Sprintf("frame type %#x after trailers", typ)
			}
			s.conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeFrameUnexpected), msg)
			return 0, &connError{http3.ErrCodeFrameUnexpected, msg}
		case typ == frameTypeData:
			s.left = l
		case typ == frameTypeHeaders:
			// Trailers: nothing in them is of use to a tunnel.
			if err := discard(s.r, l); err != nil {
				return 0, unexpectedEOF(err)
			}
			s.trailed = true
		default:
			if err := discard(s.r, l); err != nil {
				return 0, unexpectedEOF(err)
			}
		}
	}
	if uint64(len(b)) > s.left {
		b = b[:s.left]
	}
	n, err := s.r.Read(b)
	s.left -= uint64(n)
	if err == io.EOF && s.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Write sends b in one DATA frame.
func (s *h3stream) Write(b []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	h := quicvarint.Append(s.whdr[:0], frameTypeData)
	h = quicvarint.Append(h, uint64(len(b)))
	if _, err := s.str.Write(h); err != nil {
		return 0, err
	}
	return s.str.Write(b)
}

// SendDatagram sends b (context ID first) as an HTTP datagram of the
// stream. quic-go copies it: b may be reused at once.
func (s *h3stream) SendDatagram(b []byte) error {
	s.dmu.Lock()
	defer s.dmu.Unlock()
	d := quicvarint.Append(s.dbuf[:0], uint64(s.str.StreamID()/4))
	d = append(d, b...)
	s.dbuf = d[:0]
	return s.conn.SendDatagram(d)
}

func (s *h3stream) StreamID() quic.StreamID            { return s.str.StreamID() }
func (s *h3stream) Close() error                       { return s.str.Close() }
func (s *h3stream) CancelRead(c quic.StreamErrorCode)  { s.str.CancelRead(c) }
func (s *h3stream) CancelWrite(c quic.StreamErrorCode) { s.str.CancelWrite(c) }
func (s *h3stream) SetWriteDeadline(t time.Time) error { return s.str.SetWriteDeadline(t) }
func (s *h3stream) Context() context.Context           { return s.str.Context() }
