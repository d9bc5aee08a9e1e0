package tunnel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// A hand-driven HTTP/3 client for the bad-input tests: it sends what
// quic-go's, connect-ip-go's and our own clients refuse to send (raw
// HEADERS frames, raw capsules, datagrams with any prefix) and reports
// exactly what the server answers (status, stream reset code, connection
// close code).

// rawH3 is one QUIC connection speaking HTTP/3 by hand.
type rawH3 struct {
	t    *testing.T
	ts   *testServer
	conn *quic.Conn
}

// dialH3 opens a QUIC connection to ts and a control stream whose SETTINGS
// announce HTTP datagrams (RFC 9297 §2.1.1).
func dialH3(t *testing.T, ts *testServer) *rawH3 {
	t.Helper()
	c := dialRaw(t, ts)
	ctrl, err := c.OpenUniStream()
	if err != nil {
		t.Fatalf("open control stream: %v", err)
	}
	if _, err := ctrl.Write(append([]byte{streamTypeControl}, settingsFrame(settingH3Datagram, 1)...)); err != nil {
		t.Fatalf("write SETTINGS: %v", err)
	}
	return &rawH3{t: t, ts: ts, conn: c}
}

// headersFrame encodes fields as a HEADERS frame (QPACK, static table and
// literals only).
func headersFrame(t testing.TB, fields []qpack.HeaderField) []byte {
	t.Helper()
	var block bytesWriter
	enc := qpack.NewEncoder(&block)
	for _, f := range fields {
		if err := enc.WriteField(f); err != nil {
			t.Fatal(err)
		}
	}
	return appendFrame(nil, frameTypeHeaders, block)
}

type bytesWriter []byte

func (w *bytesWriter) Write(p []byte) (int, error) { *w = append(*w, p...); return len(p), nil }

// connectIPFields are the fields of a well-formed full-tunnel CONNECT-IP
// request to ts (RFC 9484 §3) with token.
func connectIPFields(authority, token string) []qpack.HeaderField {
	f := []qpack.HeaderField{
		{Name: ":method", Value: "CONNECT"},
		{Name: ":protocol", Value: "connect-ip"},
		{Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: authority},
		{Name: ":path", Value: ipPath(ipScope{})},
		{Name: "capsule-protocol", Value: "?1"},
	}
	if token != "" {
		f = append(f, qpack.HeaderField{Name: "authorization", Value: "Bearer " + token})
	}
	return f
}

// rawStream is one request stream of a rawH3.
type rawStream struct {
	h   *rawH3
	str *quic.Stream
	r   *bufio.Reader
	// data yields the payload of the DATA frames after the response's
	// HEADERS: the capsules.
	data *dataReader
}

// open opens a request stream and writes frame, the raw bytes of a
// HEADERS frame (or whatever the test wants to be first).
func (h *rawH3) open(frame []byte) *rawStream {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	str, err := h.conn.OpenStreamSync(ctx)
	if err != nil {
		h.t.Fatalf("open request stream: %v", err)
	}
	h.t.Cleanup(func() {
		str.CancelRead(0)
		str.CancelWrite(0)
	})
	if _, err := str.Write(frame); err != nil {
		// The server may stop reading a request it refuses (a header
		// section too large) before all of it is written.
		if se, ok := errors.AsType[*quic.StreamError](err); !ok || !se.Remote {
			h.t.Fatalf("write request: %v", err)
		}
	}
	s := &rawStream{h: h, str: str, r: bufio.NewReader(str)}
	s.data = &dataReader{s: s}
	return s
}

// request opens a stream and sends the header fields.
func (h *rawH3) request(fields []qpack.HeaderField) *rawStream {
	h.t.Helper()
	return h.open(headersFrame(h.t, fields))
}

// readFrame reads one frame's type and payload; payloads of up to 1 MiB.
func (s *rawStream) readFrame() (uint64, []byte, error) {
	s.str.SetReadDeadline(time.Now().Add(5 * time.Second))
	typ, err := quicvarint.Read(s.r)
	if err != nil {
		return 0, nil, err
	}
	l, err := quicvarint.Read(s.r)
	if err != nil {
		return 0, nil, err
	}
	if l > 1<<20 {
		return 0, nil, fmt.Errorf("frame of %d bytes", l)
	}
	b := make([]byte, l)
	if _, err := io.ReadFull(s.r, b); err != nil {
		return 0, nil, err
	}
	return typ, b, nil
}

// response reads the response's HEADERS frame and returns its fields
// (":status" among them), or the stream's error.
func (s *rawStream) response() (map[string]string, error) {
	for {
		typ, b, err := s.readFrame()
		if err != nil {
			return nil, err
		}
		if typ != frameTypeHeaders {
			continue // reserved frame types (RFC 9114 §7.2.8)
		}
		fields := map[string]string{}
		dec := qpack.NewDecoder().Decode(b)
		for {
			f, err := dec()
			if errors.Is(err, io.EOF) {
				return fields, nil
			}
			if err != nil {
				return nil, err
			}
			fields[f.Name] = f.Value
		}
	}
}

// status reads the response and returns its status; a stream error fails
// the test.
func (s *rawStream) status() string {
	s.h.t.Helper()
	f, err := s.response()
	if err != nil {
		s.h.t.Fatalf("read response: %v", err)
	}
	return f[":status"]
}

// dataReader reads the payloads of the stream's DATA frames in a row.
type dataReader struct {
	s         *rawStream
	remaining uint64
}

func (d *dataReader) Read(p []byte) (int, error) {
	for d.remaining == 0 {
		d.s.str.SetReadDeadline(time.Now().Add(5 * time.Second))
		typ, err := quicvarint.Read(d.s.r)
		if err != nil {
			return 0, err
		}
		l, err := quicvarint.Read(d.s.r)
		if err != nil {
			return 0, err
		}
		if typ != frameTypeData {
			if _, err := d.s.r.Discard(int(l)); err != nil {
				return 0, err
			}
			continue
		}
		d.remaining = l
	}
	p = p[:min(uint64(len(p)), d.remaining)]
	n, err := d.s.r.Read(p)
	d.remaining -= uint64(n)
	return n, err
}

// writeData sends b in one DATA frame: capsules, whole or cut anywhere.
func (s *rawStream) writeData(b []byte) {
	s.h.t.Helper()
	if _, err := s.str.Write(appendFrame(nil, frameTypeData, b)); err != nil {
		s.h.t.Fatalf("write DATA: %v", err)
	}
}

// resetCode waits for the server to reset the stream (RESET_STREAM) and
// returns its code; capsules before it are read and dropped. A stream that
// ends cleanly or stays open for 5 s fails the test.
func (s *rawStream) resetCode() quic.StreamErrorCode {
	s.h.t.Helper()
	s.str.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, s.r)
	se, ok := errors.AsType[*quic.StreamError](err)
	if !ok || !se.Remote {
		s.h.t.Fatalf("stream ended with %v, want a reset from the server", err)
	}
	return se.ErrorCode
}

// rawSession is a CONNECT-IP session opened by hand.
type rawSession struct {
	*rawStream
	v4, v6 netip.Addr
	routes int
	dns    []netip.Addr
	prefix []byte // quarter stream ID and context ID 0
}

// session opens a CONNECT-IP session with the test token and reads the
// server's unsolicited capsules up to the route advertisement (and the DNS
// configuration, which ts sends).
func (h *rawH3) session() *rawSession {
	h.t.Helper()
	s := h.request(connectIPFields(h.ts.addr, testToken))
	if got := s.status(); got != "200" {
		h.t.Fatalf("CONNECT-IP status %s, want 200", got)
	}
	rs := &rawSession{rawStream: s}
	rs.prefix = append(quicvarint.Append(nil, uint64(s.str.StreamID()/4)), 0)
	p := http3.NewCapsuleParser(s.data)
	for rs.routes == 0 || (len(h.ts.srv.dns) > 0 && rs.dns == nil) {
		typ, b := rs.nextCapsule(p)
		switch typ {
		case capsuleAddressAssign:
			as, err := parseAddressAssign(b)
			if err != nil {
				h.t.Fatal(err)
			}
			for _, a := range as {
				if a.Addr().Is4() {
					rs.v4 = a.Addr()
				} else {
					rs.v6 = a.Addr()
				}
			}
		case capsuleRouteAdvertisement:
			rts, err := parseRouteAdvertisement(b)
			if err != nil {
				h.t.Fatal(err)
			}
			rs.routes = len(rts)
		case capsuleDNSAssign:
			dns, err := parseDNSAssign(b)
			if err != nil {
				h.t.Fatal(err)
			}
			rs.dns = dns
		}
	}
	if !rs.v4.IsValid() || !rs.v6.IsValid() {
		h.t.Fatalf("session assigned %s and %s, want an address of each family", rs.v4, rs.v6)
	}
	return rs
}

// nextCapsule reads the next capsule from the server (at most 64 KiB).
func (rs *rawSession) nextCapsule(p *http3.CapsuleParser) (http3.CapsuleType, []byte) {
	rs.h.t.Helper()
	typ, r, err := p.Next()
	if err != nil {
		rs.h.t.Fatalf("read capsule: %v", err)
	}
	b, err := capsuleBytes(r)
	if err != nil {
		rs.h.t.Fatalf("read capsule %#x: %v", typ, err)
	}
	return typ, b
}

// sendDatagram sends payload (context ID first) as an HTTP datagram of the
// session.
func (rs *rawSession) sendDatagram(payload []byte) {
	rs.h.t.Helper()
	d := append(quicvarint.Append(nil, uint64(rs.str.StreamID()/4)), payload...)
	if err := rs.h.conn.SendDatagram(d); err != nil {
		rs.h.t.Fatalf("SendDatagram: %v", err)
	}
}

// passes checks that the session still carries packets both ways: one up
// through a datagram to the server's TUN, one down from the TUN.
func (rs *rawSession) passes() {
	rs.h.t.Helper()
	t, ts := rs.h.t, rs.h.ts
	target := netip.MustParseAddr("198.18.2.2")
	up := udp4(rs.v4, target, 1000, 53, []byte("still up"))
	rs.sendDatagram(append([]byte{0}, up...))
	got := recv(t, ts.dev.Inbound, "the session's packet at the server TUN")
	if h := mustHeader(t, got); h.src != rs.v4 || h.dst != target || string(got[h.hdrLen:]) != string(up[h.hdrLen:]) {
		t.Fatalf("server TUN got %x, want %x", got, up)
	}
	down := udp4(target, rs.v4, 53, 1000, []byte("still down"))
	send(t, ts.dev.Outbound, down)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		d, err := rs.h.conn.ReceiveDatagram(ctx)
		if err != nil {
			t.Fatalf("no datagram for the session: %v", err)
		}
		if string(d) == string(append(append([]byte{}, rs.prefix...), down...)) {
			return
		}
		t.Logf("skipping datagram %x", d)
	}
}

// capsuleDrops returns the server's capsule drop counters.
func capsuleDrops(s *Server) [numCapsuleDrops]uint64 {
	var n [numCapsuleDrops]uint64
	for d := range numCapsuleDrops {
		n[d] = s.counters.capsuleDrops[d].Load()
	}
	return n
}

// waitCounter polls f until it returns want (5 s at most) and fails t with
// what if it returns anything else at the end.
func waitCounter(t *testing.T, what string, f func() uint64, want uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for f() != want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := f(); got != want {
		t.Fatalf("%s = %d, want %d", what, got, want)
	}
}
