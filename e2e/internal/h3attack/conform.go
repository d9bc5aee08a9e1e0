package main

// conform: one HTTP/3 (RFC 9114), QPACK (RFC 9204) or HTTP datagram (RFC
// 9297) rule per case, broken on purpose (or, for the benign cases,
// followed in a way clients rarely do), and how the server ended the
// connection or the stream.

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

type conform struct {
	name string
	wait time.Duration
	ping string
}

func conformFlags(fs *flag.FlagSet) *conform {
	c := &conform{}
	fs.StringVar(&c.name, "case", "", "the case: "+strings.Join(slices.Sorted(maps.Keys(conformCases)), ", "))
	fs.DurationVar(&c.wait, "wait", 2*time.Second, "how long to wait for the server to close the connection")
	fs.StringVar(&c.ping, "ping", "", "unknown-frames: an IPv4 address to ping through the session (default: no ping)")
	return c
}

// conformReport is the output line: how the connection ended ("open" if
// the server left it open for -wait), and for cases with a request stream
// how that ended.
type conformReport struct {
	Event string `json:"event"` // "done"
	Case  string `json:"case"`
	closeInfo
	Stream *closeInfo `json:"stream,omitempty"`
	// OK is set by the benign cases when everything they tried worked.
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// caseEnv is what a case runs with.
type caseEnv struct {
	ctx   context.Context
	d     *dialer
	token string
	wait  time.Duration
	ping  netip.Addr
	rep   *conformReport
}

var conformCases = map[string]func(e *caseEnv) error{
	// RFC 9204 §4.2: at most one encoder and one decoder stream each,
	// else H3_STREAM_CREATION_ERROR; closing either is
	// H3_CLOSED_CRITICAL_STREAM.
	"two-qpack-encoder":   uniStreams(streamQPACKEncoder, streamQPACKEncoder),
	"two-qpack-decoder":   uniStreams(streamQPACKDecoder, streamQPACKDecoder),
	"close-qpack-encoder": closedUniStream(streamQPACKEncoder),
	"close-qpack-decoder": closedUniStream(streamQPACKDecoder),
	// RFC 9204 §4.3.1: a capacity above the decoder's maximum (ours is 0:
	// we send no SETTINGS_QPACK_MAX_TABLE_CAPACITY) is
	// QPACK_ENCODER_STREAM_ERROR, and so is any insert into a table of
	// capacity 0 (§3.2.2, §4.3.3).
	"set-capacity-4096": instruction(streamQPACKEncoder, appendPrefixInt(nil, 0x20, 5, 4096)),
	"qpack-insert":      instruction(streamQPACKEncoder, insertWithLiteralName("foo", "bar")),
	// RFC 9204 §4.4.1, §4.4.3: acknowledging a section that referenced
	// no dynamic entry, or an increment past what was inserted (nothing),
	// is QPACK_DECODER_STREAM_ERROR.
	"section-ack":            instruction(streamQPACKDecoder, appendPrefixInt(nil, 0x80, 7, 0)),
	"insert-count-increment": instruction(streamQPACKDecoder, appendPrefixInt(nil, 0x00, 6, 1)),
	// RFC 9204 §2.2.3, §4.5.1.1: a field section that needs dynamic
	// entries the table cannot have is QPACK_DECOMPRESSION_FAILED, a
	// connection error.
	"required-insert-count": requiredInsertCount,
	// RFC 9297 §2.1.1: H3_DATAGRAM=1 without the QUIC max_datagram_frame_size
	// transport parameter is H3_SETTINGS_ERROR.
	"h3-datagram-without-quic-datagrams": datagramWithoutQUIC,
	// RFC 9114 §5.2: the IDs of successive GOAWAYs must not increase, else
	// H3_ID_ERROR.
	"client-goaway-rising": goAwayRising,
	// RFC 9114 §4.1: after trailers no DATA frame may follow:
	// H3_FRAME_UNEXPECTED.
	"data-after-trailers": dataAfterTrailers,
	// RFC 9114 §9: reserved frame types are ignored, wherever they are.
	"unknown-frames": unknownFrames,
	// RFC 9114 §4.1: trailers end the message; the session ends cleanly.
	"trailers": trailers,
}

func (c *conform) run(ctx context.Context, d *dialer, cm common) error {
	f, ok := conformCases[c.name]
	if !ok {
		return fmt.Errorf("unknown case %q", c.name)
	}
	token, err := readToken(cm.tokenFile)
	if err != nil {
		return err
	}
	e := &caseEnv{ctx: ctx, d: d, token: token, wait: c.wait, rep: &conformReport{Event: "done", Case: c.name}}
	if c.ping != "" {
		if e.ping, err = netip.ParseAddr(c.ping); err != nil || !e.ping.Is4() {
			return fmt.Errorf("-ping %q: want an IPv4 address", c.ping)
		}
	}
	if err := f(e); err != nil {
		return fmt.Errorf("%s: %w", c.name, err)
	}
	emit(e.rep)
	return nil
}

// open dials with the default settings.
func (e *caseEnv) open() (*h3conn, error) {
	return e.d.openH3(e.ctx, quicConfig(true), defaultSettings)
}

// finish waits for h's connection to close and records how.
func (e *caseEnv) finish(h *h3conn) {
	e.rep.closeInfo = waitClosed(h.qc, e.wait)
	h.close()
}

// uniStreams opens one unidirectional stream of each type.
func uniStreams(types ...uint64) func(e *caseEnv) error {
	return func(e *caseEnv) error {
		h, err := e.open()
		if err != nil {
			return err
		}
		for _, t := range types {
			if _, err := h.uniStream(t, nil); err != nil {
				return err
			}
		}
		e.finish(h)
		return nil
	}
}

// closedUniStream opens a stream of type typ and ends it with a FIN.
func closedUniStream(typ uint64) func(e *caseEnv) error {
	return func(e *caseEnv) error {
		h, err := e.open()
		if err != nil {
			return err
		}
		s, err := h.uniStream(typ, nil)
		if err != nil {
			return err
		}
		// Let the type arrive on its own first, as a stream that lived.
		time.Sleep(100 * time.Millisecond)
		s.Close()
		e.finish(h)
		return nil
	}
}

// instruction sends b on a stream of type typ.
func instruction(typ uint64, b []byte) func(e *caseEnv) error {
	return func(e *caseEnv) error {
		h, err := e.open()
		if err != nil {
			return err
		}
		if _, err := h.uniStream(typ, b); err != nil {
			return err
		}
		e.finish(h)
		return nil
	}
}

// appendPrefixInt appends a QPACK prefixed integer (RFC 9204 §4.1.1, RFC
// 7541 §5.1) of n bits after the pattern bits of first.
func appendPrefixInt(b []byte, first byte, n uint8, v uint64) []byte {
	max := uint64(1)<<n - 1
	if v < max {
		return append(b, first|byte(v))
	}
	b = append(b, first|byte(max))
	v -= max
	for v >= 0x80 {
		b = append(b, byte(v&0x7f)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// insertWithLiteralName is the encoder instruction of RFC 9204 §4.3.3,
// without Huffman coding.
func insertWithLiteralName(name, value string) []byte {
	b := appendPrefixInt(nil, 0x40, 5, uint64(len(name)))
	b = append(b, name...)
	b = appendPrefixInt(b, 0x00, 7, uint64(len(value)))
	return append(b, value...)
}

// requiredInsertCount sends a CONNECT-IP request whose field section
// prefix says Required Insert Count 1 (encoded as 1 with any table size).
func requiredInsertCount(e *caseEnv) error {
	h, err := e.open()
	if err != nil {
		return err
	}
	block := encodeFields(connectIPFields(e.d.authority, bearer(e.token)...))
	block[0] = 0x01 // the prefix qpack wrote is 0x00 0x00
	rq, err := h.open(e.ctx, appendFrame(nil, frameHeaders, block))
	if err != nil {
		return err
	}
	_, err = rq.response(e.wait)
	st := describe(err)
	e.rep.Stream = &st
	e.finish(h)
	return nil
}

func datagramWithoutQUIC(e *caseEnv) error {
	h, err := e.d.openH3(e.ctx, quicConfig(false), defaultSettings)
	if err != nil {
		return err
	}
	e.finish(h)
	return nil
}

func goAwayFrame(id uint64) []byte {
	return appendFrame(nil, frameGoAway, quicvarint.Append(nil, id))
}

func goAwayRising(e *caseEnv) error {
	h, err := e.open()
	if err != nil {
		return err
	}
	if _, err := h.ctrl.Write(append(goAwayFrame(4), goAwayFrame(8)...)); err != nil {
		return err
	}
	e.finish(h)
	return nil
}

// unknownCapsule is a capsule of a reserved type (RFC 9297 §5.4:
// 0x29 * N + 0x17), which the server must skip.
var unknownCapsule = appendCapsule(nil, 0x29*3+0x17, []byte("skip me"))

// reservedFrame is a frame of a reserved type (RFC 9114 §7.2.8: 0x1f * N
// + 0x21).
func reservedFrame(n uint64, p []byte) []byte {
	return appendFrame(nil, 0x1f*n+0x21, p)
}

// trailerSection is a HEADERS frame with one trailer field.
func trailerSection() []byte {
	return appendFrame(nil, frameHeaders, encodeFields([]qpack.HeaderField{{Name: "x-trailer", Value: "1"}}))
}

// watchStream reads rq's body in the background until it ends; the
// channel yields how it ended.
func watchStream(rq *request) <-chan closeInfo {
	ch := make(chan closeInfo, 1)
	go func() {
		for {
			if _, _, err := rq.readCapsule(); err != nil {
				ch <- describe(err)
				return
			}
		}
	}()
	return ch
}

// streamEnd waits up to d for the stream's end.
func streamEnd(ch <-chan closeInfo, d time.Duration) closeInfo {
	select {
	case ci := <-ch:
		return ci
	case <-time.After(d):
		return closeInfo{Outcome: "open"}
	}
}

func dataAfterTrailers(e *caseEnv) error {
	h, err := e.open()
	if err != nil {
		return err
	}
	rq, _, err := h.session(e.ctx, connectIPFields(e.d.authority, bearer(e.token)...), nil)
	if err != nil {
		return err
	}
	ended := watchStream(rq)
	b := appendFrame(nil, frameData, unknownCapsule)
	b = append(b, trailerSection()...)
	b = appendFrame(b, frameData, unknownCapsule)
	if _, err := rq.str.Write(b); err != nil {
		return err
	}
	e.finish(h)
	st := streamEnd(ended, 100*time.Millisecond)
	e.rep.Stream = &st
	return nil
}

// unknownFrames puts reserved frames before the request's HEADERS and
// between two DATA frames that split an ADDRESS_REQUEST capsule: the
// session must answer the request, pass a ping if -ping is set, and the
// connection must stay open.
func unknownFrames(e *caseEnv) error {
	h, err := e.open()
	if err != nil {
		return err
	}
	defer h.close()
	prefix := append(reservedFrame(0, []byte("abc")), reservedFrame(1, make([]byte, 8))...)
	rq, as, err := h.session(e.ctx, connectIPFields(e.d.authority, bearer(e.token)...), prefix)
	if err != nil {
		e.rep.Detail = "session: " + err.Error()
		e.rep.closeInfo, _ = connClosed(h.qc)
		return nil
	}
	var addr4 netip.Addr
	for _, a := range as {
		if a.prefix.Addr().Is4() {
			addr4 = a.prefix.Addr()
		}
	}
	// ADDRESS_REQUEST for any IPv4 address (RFC 9484 §4.7.2: the
	// unspecified address), split over two DATA frames.
	c := appendAddresses(nil, capsuleAddressRequest, []addressEntry{{reqID: 1, prefix: netip.PrefixFrom(netip.IPv4Unspecified(), 32)}})
	b := reservedFrame(2, nil)
	b = appendFrame(b, frameData, unknownCapsule)
	b = append(b, reservedFrame(3, []byte("x"))...)
	b = appendFrame(b, frameData, c[:3])
	b = append(b, reservedFrame(4, make([]byte, 100))...)
	b = appendFrame(b, frameData, c[3:])
	b = append(b, reservedFrame(5, nil)...)
	if _, err := rq.str.Write(b); err != nil {
		return err
	}
	ans, err := rq.assignment(e.wait)
	if err != nil {
		e.rep.Detail = "no answer to the ADDRESS_REQUEST: " + err.Error()
		st := describe(err)
		e.rep.Stream = &st
		e.rep.closeInfo, _ = connClosed(h.qc)
		return nil
	}
	if !slices.ContainsFunc(ans, func(a addressEntry) bool { return a.reqID == 1 }) {
		e.rep.Detail = fmt.Sprintf("ADDRESS_ASSIGN %v does not answer request 1", prefixes(ans))
		e.rep.closeInfo, _ = connClosed(h.qc)
		return nil
	}
	detail := fmt.Sprintf("assigned %v, request answered", addr4)
	if e.ping.IsValid() {
		rtt, err := pingThrough(e.ctx, h.qc, rq.str.StreamID(), addr4, e.ping, 3*time.Second)
		if err != nil {
			e.rep.Detail = detail + "; ping: " + err.Error()
			e.rep.closeInfo, _ = connClosed(h.qc)
			return nil
		}
		detail += fmt.Sprintf(", ping %v answered in %v", e.ping, rtt.Round(time.Microsecond))
	}
	e.rep.closeInfo, _ = connClosed(h.qc)
	e.rep.OK = e.rep.Outcome == "open"
	e.rep.Detail = detail
	rq.str.Close()
	return nil
}

// trailers ends a session with trailers and a FIN: the server must end the
// stream with a FIN too, and the connection must carry a second session.
func trailers(e *caseEnv) error {
	h, err := e.open()
	if err != nil {
		return err
	}
	defer h.close()
	fields := connectIPFields(e.d.authority, bearer(e.token)...)
	rq, _, err := h.session(e.ctx, fields, nil)
	if err != nil {
		return err
	}
	ended := watchStream(rq)
	b := appendFrame(nil, frameData, unknownCapsule)
	b = append(b, trailerSection()...)
	if _, err := rq.str.Write(b); err != nil {
		return err
	}
	rq.str.Close()
	st := streamEnd(ended, e.wait)
	e.rep.Stream = &st
	if st.Outcome != "fin" {
		e.rep.Detail = "the server did not end the first session with a FIN"
		e.rep.closeInfo, _ = connClosed(h.qc)
		return nil
	}
	rq2, as, err := h.session(e.ctx, fields, nil)
	if err != nil {
		e.rep.Detail = "second session: " + err.Error()
		e.rep.closeInfo, _ = connClosed(h.qc)
		return nil
	}
	rq2.str.Close()
	e.rep.closeInfo, _ = connClosed(h.qc)
	e.rep.OK = e.rep.Outcome == "open"
	e.rep.Detail = fmt.Sprintf("first session ended with a FIN; second session assigned %v", prefixes(as))
	return nil
}

// pingThrough sends ICMP echo requests from src to dst as HTTP datagrams
// of stream id (context ID 0, RFC 9484 §6) every 500 ms until a reply
// comes back or d passes.
func pingThrough(ctx context.Context, qc *quic.Conn, id quic.StreamID, src, dst netip.Addr, d time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	const ident = 0x4d51
	replies := make(chan time.Time, 1)
	go func() {
		for {
			b, err := qc.ReceiveDatagram(ctx)
			if err != nil {
				return
			}
			q, n, err := quicvarint.Parse(b)
			if err != nil || q != uint64(id)/4 || len(b) < n+1+28 || b[n] != 0 {
				continue
			}
			p := b[n+1:]
			ihl := int(p[0]&0x0f) * 4
			if p[0]>>4 != 4 || p[9] != 1 || len(p) < ihl+8 || p[ihl] != 0 || binary.BigEndian.Uint16(p[ihl+4:]) != ident {
				continue
			}
			replies <- time.Now()
			return
		}
	}()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var sent time.Time
	for seq := uint16(1); ; seq++ {
		dg := quicvarint.Append(nil, uint64(id)/4)
		dg = append(dg, 0)
		dg = append(dg, echoRequest(src, dst, ident, seq)...)
		if sent.IsZero() {
			sent = time.Now()
		}
		if err := qc.SendDatagram(dg); err != nil {
			return 0, err
		}
		select {
		case t := <-replies:
			return t.Sub(sent), nil
		case <-ctx.Done():
			return 0, errors.New("no echo reply")
		case <-tick.C:
		}
	}
}

// echoRequest builds an IPv4 ICMP echo request.
func echoRequest(src, dst netip.Addr, ident, seq uint16) []byte {
	payload := []byte("h3attack ping")
	p := make([]byte, 20+8+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8] = 64 // TTL
	p[9] = 1  // ICMP
	s4, d4 := src.As4(), dst.As4()
	copy(p[12:], s4[:])
	copy(p[16:], d4[:])
	binary.BigEndian.PutUint16(p[10:], checksum(p[:20]))
	icmp := p[20:]
	icmp[0] = 8 // echo request
	binary.BigEndian.PutUint16(icmp[4:], ident)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	copy(icmp[8:], payload)
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp))
	return p
}

// checksum is the Internet checksum (RFC 1071).
func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// prefixes lists the prefixes of es.
func prefixes(es []addressEntry) []netip.Prefix {
	out := make([]netip.Prefix, len(es))
	for i, e := range es {
		out[i] = e.prefix
	}
	return out
}
