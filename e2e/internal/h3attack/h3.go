package main

// HTTP/3 by hand (RFC 9114): the client's control stream, request streams
// with raw HEADERS frames, DATA frames carrying capsules (RFC 9297 §3.2),
// and how a connection or stream ended.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

// HTTP/3 frame, stream and setting types (RFC 9114 §7.2, §6.2, §7.2.4.1;
// RFC 9204 §4.2; RFC 9297 §2.1.1; RFC 9220 §3).
const (
	frameData     = 0x00
	frameHeaders  = 0x01
	frameSettings = 0x04
	frameGoAway   = 0x07

	streamControl      = 0x00
	streamQPACKEncoder = 0x02
	streamQPACKDecoder = 0x03

	settingH3Datagram      = 0x33
	settingExtendedConnect = 0x08
)

// CONNECT-IP capsule types (RFC 9484 §4.7, §10.4).
const (
	capsuleAddressAssign  = 0x01
	capsuleAddressRequest = 0x02
)

// maxFrame bounds a frame or capsule this tool reads from the server.
const maxFrame = 1 << 20

// dialer opens QUIC connections to the server, round robin over the local
// addresses (one UDP socket and quic.Transport each).
type dialer struct {
	raddr     *net.UDPAddr
	authority string // :authority of the requests
	tlsConf   *tls.Config
	trs       []*quic.Transport
	next      atomic.Uint64
}

// quicConfig is the QUIC configuration of every connection: datagrams on
// (unless a case turns them off), and keep-alives so that the server, not
// this tool, decides when an idle connection ends.
func quicConfig(datagrams bool) *quic.Config {
	return &quic.Config{
		EnableDatagrams:      datagrams,
		HandshakeIdleTimeout: 5 * time.Second,
		MaxIdleTimeout:       60 * time.Second,
		KeepAlivePeriod:      2 * time.Second,
	}
}

func (d *dialer) dial(ctx context.Context, qc *quic.Config) (*quic.Conn, error) {
	tr := d.trs[d.next.Add(1)%uint64(len(d.trs))]
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return tr.Dial(dctx, d.raddr, d.tlsConf, qc)
}

// h3conn is one QUIC connection with our control stream open.
type h3conn struct {
	qc   *quic.Conn
	ctrl *quic.SendStream
}

// setting is one SETTINGS parameter.
type setting struct{ id, val uint64 }

// settingsFrame encodes a SETTINGS frame.
func settingsFrame(ss ...setting) []byte {
	var p []byte
	for _, s := range ss {
		p = quicvarint.Append(p, s.id)
		p = quicvarint.Append(p, s.val)
	}
	return appendFrame(nil, frameSettings, p)
}

// defaultSettings are a CONNECT-IP client's: HTTP datagrams (RFC 9297
// §2.1.1).
var defaultSettings = []setting{{settingH3Datagram, 1}}

// openH3 dials and opens the control stream with SETTINGS ss. The
// server's unidirectional streams are read and discarded.
func (d *dialer) openH3(ctx context.Context, qconf *quic.Config, ss []setting) (*h3conn, error) {
	qc, err := d.dial(ctx, qconf)
	if err != nil {
		return nil, fmt.Errorf("quic: %w", err)
	}
	ctrl, err := qc.OpenUniStream()
	if err != nil {
		qc.CloseWithError(0, "")
		return nil, fmt.Errorf("open control stream: %w", err)
	}
	if _, err := ctrl.Write(append(quicvarint.Append(nil, streamControl), settingsFrame(ss...)...)); err != nil {
		qc.CloseWithError(0, "")
		return nil, fmt.Errorf("write SETTINGS: %w", err)
	}
	go func() {
		for {
			str, err := qc.AcceptUniStream(context.Background())
			if err != nil {
				return
			}
			go io.Copy(io.Discard, str)
		}
	}()
	return &h3conn{qc: qc, ctrl: ctrl}, nil
}

// uniStream opens a unidirectional stream of type typ and writes p after
// the type.
func (h *h3conn) uniStream(typ uint64, p []byte) (*quic.SendStream, error) {
	s, err := h.qc.OpenUniStream()
	if err != nil {
		return nil, err
	}
	_, err = s.Write(append(quicvarint.Append(nil, typ), p...))
	return s, err
}

func (h *h3conn) close() { h.qc.CloseWithError(0, "") }

// appendFrame appends an HTTP/3 frame of type typ with payload p.
func appendFrame(b []byte, typ uint64, p []byte) []byte {
	b = quicvarint.Append(b, typ)
	b = quicvarint.Append(b, uint64(len(p)))
	return append(b, p...)
}

// appendCapsule appends a capsule (RFC 9297 §3.2).
func appendCapsule(b []byte, typ uint64, v []byte) []byte {
	return appendFrame(b, typ, v) // the same shape: type, length, value
}

// encodeFields QPACK-encodes fields (static table and literals only).
func encodeFields(fields []qpack.HeaderField) []byte {
	var b bytes.Buffer
	enc := qpack.NewEncoder(&b)
	for _, f := range fields {
		enc.WriteField(f)
	}
	return b.Bytes()
}

// connectIPFields are the fields of a full-tunnel CONNECT-IP request (RFC
// 9484 §3, default template) with the given Authorization values.
func connectIPFields(authority string, auth ...string) []qpack.HeaderField {
	f := []qpack.HeaderField{
		{Name: ":method", Value: "CONNECT"},
		{Name: ":protocol", Value: "connect-ip"},
		{Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: authority},
		{Name: ":path", Value: "/.well-known/masque/ip/*/*/"},
		{Name: "capsule-protocol", Value: "?1"},
	}
	for _, a := range auth {
		f = append(f, qpack.HeaderField{Name: "authorization", Value: a})
	}
	return f
}

// bearer is an Authorization value for token; "" gives none.
func bearer(token string) []string {
	if token == "" {
		return nil
	}
	return []string{"Bearer " + token}
}

// request is one request stream.
type request struct {
	h   *h3conn
	str *quic.Stream
	r   *bufio.Reader
	// body reads the payload of the server's DATA frames after the
	// response header.
	body *dataReader
}

// open opens a request stream and writes b (a HEADERS frame, or whatever
// the case wants first).
func (h *h3conn) open(ctx context.Context, b []byte) (*request, error) {
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	str, err := h.qc.OpenStreamSync(octx)
	if err != nil {
		return nil, fmt.Errorf("open request stream: %w", err)
	}
	if _, err := str.Write(b); err != nil {
		return nil, fmt.Errorf("write request: %w", err)
	}
	rq := &request{h: h, str: str, r: bufio.NewReader(str)}
	rq.body = &dataReader{r: rq.r}
	return rq, nil
}

// readFrame reads one frame from r.
func readFrame(r *bufio.Reader) (typ uint64, p []byte, err error) {
	typ, err = quicvarint.Read(r)
	if err != nil {
		return 0, nil, err
	}
	l, err := quicvarint.Read(r)
	if err != nil {
		return 0, nil, err
	}
	if l > maxFrame {
		return 0, nil, fmt.Errorf("frame of %d bytes", l)
	}
	p = make([]byte, l)
	_, err = io.ReadFull(r, p)
	return typ, p, err
}

// response reads the response header, skipping other frames before it,
// and returns its status, bounded by d.
func (rq *request) response(d time.Duration) (int, error) {
	rq.str.SetReadDeadline(time.Now().Add(d))
	defer rq.str.SetReadDeadline(time.Time{})
	for {
		typ, p, err := readFrame(rq.r)
		if err != nil {
			return 0, err
		}
		if typ != frameHeaders {
			continue
		}
		decode := qpack.NewDecoder().Decode(p)
		for {
			f, err := decode()
			if err == io.EOF {
				return 0, errors.New("response without :status")
			}
			if err != nil {
				return 0, fmt.Errorf("response header: %w", err)
			}
			if f.Name == ":status" {
				return strconv.Atoi(f.Value)
			}
		}
	}
}

// errCodeRequestCancelled is H3_REQUEST_CANCELLED (RFC 9114 §8.1).
const errCodeRequestCancelled = 0x10c

// reset cancels both directions of the request stream.
func (rq *request) reset() {
	rq.str.CancelRead(errCodeRequestCancelled)
	rq.str.CancelWrite(errCodeRequestCancelled)
}

// dataReader yields the payload of the DATA frames of a stream, skipping
// other frames; a HEADERS frame (trailers) is reported as trailers.
type dataReader struct {
	r        *bufio.Reader
	left     uint64
	trailers bool
}

var errTrailers = errors.New("trailers")

func (d *dataReader) Read(b []byte) (int, error) {
	for d.left == 0 {
		typ, err := quicvarint.Read(d.r)
		if err != nil {
			return 0, err
		}
		l, err := quicvarint.Read(d.r)
		if err != nil {
			return 0, err
		}
		if typ == frameData {
			d.left = l
			continue
		}
		if l > maxFrame {
			return 0, fmt.Errorf("frame of %d bytes", l)
		}
		if _, err := d.r.Discard(int(l)); err != nil {
			return 0, err
		}
		if typ == frameHeaders {
			d.trailers = true
			return 0, errTrailers
		}
	}
	n, err := d.r.Read(b[:min(uint64(len(b)), d.left)])
	d.left -= uint64(n)
	return n, err
}

// ReadByte makes dataReader a quicvarint.Reader.
func (d *dataReader) ReadByte() (byte, error) {
	var b [1]byte
	_, err := io.ReadFull(d, b[:])
	return b[0], err
}

// readCapsule reads one capsule from the body.
func (rq *request) readCapsule() (typ uint64, v []byte, err error) {
	typ, err = quicvarint.Read(rq.body)
	if err != nil {
		return 0, nil, err
	}
	l, err := quicvarint.Read(rq.body)
	if err != nil {
		return 0, nil, err
	}
	if l > maxFrame {
		return 0, nil, fmt.Errorf("capsule of %d bytes", l)
	}
	v = make([]byte, l)
	_, err = io.ReadFull(rq.body, v)
	return typ, v, err
}

// addressEntry is an entry of ADDRESS_ASSIGN or ADDRESS_REQUEST (RFC
// 9484 §4.7.1-2).
type addressEntry struct {
	reqID  uint64
	prefix netip.Prefix
}

// appendAddresses appends a capsule of type typ listing es.
func appendAddresses(b []byte, typ uint64, es []addressEntry) []byte {
	var v []byte
	for _, e := range es {
		v = quicvarint.Append(v, e.reqID)
		if e.prefix.Addr().Is4() {
			v = append(v, 4)
		} else {
			v = append(v, 6)
		}
		v = append(v, e.prefix.Addr().AsSlice()...)
		v = append(v, byte(e.prefix.Bits()))
	}
	return appendCapsule(b, typ, v)
}

// parseAddresses parses the value of ADDRESS_ASSIGN.
func parseAddresses(v []byte) ([]addressEntry, error) {
	var out []addressEntry
	for len(v) > 0 {
		id, n, err := quicvarint.Parse(v)
		if err != nil {
			return nil, errors.New("truncated request ID")
		}
		v = v[n:]
		if len(v) < 1 {
			return nil, errors.New("truncated entry")
		}
		l := 4
		if v[0] == 6 {
			l = 16
		} else if v[0] != 4 {
			return nil, fmt.Errorf("IP version %d", v[0])
		}
		if len(v) < 1+l+1 {
			return nil, errors.New("truncated entry")
		}
		a, _ := netip.AddrFromSlice(v[1 : 1+l])
		p, err := a.Prefix(int(v[1+l]))
		if err != nil {
			return nil, err
		}
		out = append(out, addressEntry{reqID: id, prefix: p})
		v = v[2+l:]
	}
	return out, nil
}

// assignment waits up to d for the next ADDRESS_ASSIGN on the body,
// skipping other capsules, and returns its entries.
func (rq *request) assignment(d time.Duration) ([]addressEntry, error) {
	rq.str.SetReadDeadline(time.Now().Add(d))
	defer rq.str.SetReadDeadline(time.Time{})
	for {
		typ, v, err := rq.readCapsule()
		if err != nil {
			return nil, err
		}
		if typ == capsuleAddressAssign {
			return parseAddresses(v)
		}
	}
}

// session opens an authenticated CONNECT-IP session: the request, a 2xx,
// and the first ADDRESS_ASSIGN.
func (h *h3conn) session(ctx context.Context, fields []qpack.HeaderField, prefix []byte) (*request, []addressEntry, error) {
	rq, err := h.open(ctx, append(prefix, appendFrame(nil, frameHeaders, encodeFields(fields))...))
	if err != nil {
		return nil, nil, err
	}
	st, err := rq.response(5 * time.Second)
	if err != nil {
		rq.reset()
		return nil, nil, fmt.Errorf("response: %w", err)
	}
	if st/100 != 2 {
		rq.reset()
		return nil, nil, fmt.Errorf("status %d", st)
	}
	as, err := rq.assignment(5 * time.Second)
	if err != nil {
		rq.reset()
		return nil, nil, fmt.Errorf("address assignment: %w", err)
	}
	return rq, as, nil
}

// closeInfo is how a connection or stream ended, for the JSON output.
type closeInfo struct {
	Outcome string `json:"outcome"` // conn_closed, stream_reset, fin, open, error
	Code    string `json:"code,omitempty"`
	Remote  bool   `json:"remote,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

func hexCode(c uint64) string { return fmt.Sprintf("%#x", c) }

// connClosed describes how qc ended; ok is false if it is still open.
func connClosed(qc *quic.Conn) (closeInfo, bool) {
	if qc.Context().Err() == nil {
		return closeInfo{Outcome: "open"}, false
	}
	return describe(context.Cause(qc.Context())), true
}

// describe turns a QUIC error into a closeInfo.
func describe(err error) closeInfo {
	if ae, ok := errors.AsType[*quic.ApplicationError](err); ok {
		return closeInfo{Outcome: "conn_closed", Code: hexCode(uint64(ae.ErrorCode)), Remote: ae.Remote, Reason: ae.ErrorMessage}
	}
	if se, ok := errors.AsType[*quic.StreamError](err); ok {
		return closeInfo{Outcome: "stream_reset", Code: hexCode(uint64(se.ErrorCode)), Remote: se.Remote}
	}
	if te, ok := errors.AsType[*quic.TransportError](err); ok {
		return closeInfo{Outcome: "conn_closed", Code: "transport:" + hexCode(uint64(te.ErrorCode)), Remote: te.Remote, Reason: te.ErrorMessage}
	}
	if _, ok := errors.AsType[*quic.IdleTimeoutError](err); ok {
		return closeInfo{Outcome: "conn_closed", Code: "idle_timeout"}
	}
	if errors.Is(err, io.EOF) {
		return closeInfo{Outcome: "fin"}
	}
	if err == nil {
		return closeInfo{Outcome: "open"}
	}
	return closeInfo{Outcome: "error", Reason: err.Error()}
}

// waitClosed waits up to d for qc to close and describes the outcome.
func waitClosed(qc *quic.Conn, d time.Duration) closeInfo {
	select {
	case <-qc.Context().Done():
	case <-time.After(d):
	}
	ci, _ := connClosed(qc)
	return ci
}
