package tunnel

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// Bad requests and datagrams for streams that are no session, sent by hand
// over real QUIC (h3raw_test.go).

// counts is a snapshot of the request, connection and drop counters.
type counts struct {
	refused    [numRefusals]uint64
	unrouted   [numUnrouted]uint64
	connErrors [numConnErrors]uint64
	drops      [numDropReasons]uint64
}

func countsOf(s *Server) counts {
	var c counts
	for r := range numRefusals {
		c.refused[r] = s.counters.refused[r].Load()
	}
	for r := range numUnrouted {
		c.unrouted[r] = s.counters.unrouted[r].Load()
	}
	for i := range numConnErrors {
		c.connErrors[i] = s.counters.connErrors[i].Load()
	}
	c.drops = dropCounts(&s.counters)
	return c
}

// withField returns fields with name set to value in its place (pseudo
// header fields first, RFC 9114 §4.3); an empty value removes it.
func withField(fields []qpack.HeaderField, name, value string) []qpack.HeaderField {
	fields = slices.Clone(fields)
	i := slices.IndexFunc(fields, func(f qpack.HeaderField) bool { return f.Name == name })
	switch {
	case i >= 0 && value == "":
		return slices.Delete(fields, i, i+1)
	case i >= 0:
		fields[i].Value = value
	case strings.HasPrefix(name, ":"):
		fields = slices.Insert(fields, 0, qpack.HeaderField{Name: name, Value: value})
	case value != "":
		fields = append(fields, qpack.HeaderField{Name: name, Value: value})
	}
	return fields
}

// HTTP/3 refuses request header sections that are too large (431, then
// H3_EXCESSIVE_LOAD on the read side) or malformed (H3_MESSAGE_ERROR)
// before our handler sees them; serveH3 counts each under
// unrouted{headers}. The connection goes on. (Undecodable QPACK ends the
// connection: TestUndecodableHeadersCloseConnection.)
func TestBadHeaderSectionsAreRefused(t *testing.T) {
	ts := startServer(t)
	h := dialH3(t, ts)
	ok := connectIPFields(ts.addr, testToken)
	var big []qpack.HeaderField
	for i := range 100 {
		big = append(big, qpack.HeaderField{Name: "x-pad-" + strings.Repeat("p", i%7), Value: strings.Repeat("v", 1000)})
	}
	cut := headersFrame(t, ok)
	tests := []struct {
		name   string
		frame  []byte
		fin    bool
		status string               // the response's status, or
		code   quic.StreamErrorCode // the reset
	}{
		{"100 KB of header fields", headersFrame(t, slices.Concat(ok, big)), false, "431", 0},
		{"a HEADERS frame announcing 1 GiB", quicvarint.Append(quicvarint.Append(nil, frameTypeHeaders), 1<<30), false, "431", 0},
		{"no :method", headersFrame(t, withField(ok, ":method", "")), false, "", quic.StreamErrorCode(http3.ErrCodeMessageError)},
		{"no :authority", headersFrame(t, withField(ok, ":authority", "")), false, "", quic.StreamErrorCode(http3.ErrCodeMessageError)},
		{"a :protocol that is no token", headersFrame(t, withField(ok, ":protocol", "connect ip")), false, "", quic.StreamErrorCode(http3.ErrCodeMessageError)},
		{"HEADERS cut by the stream's end", cut[:len(cut)-5], true, "", quic.StreamErrorCode(http3.ErrCodeRequestIncomplete)},
		{"no HEADERS before the stream's end", nil, true, "", quic.StreamErrorCode(http3.ErrCodeRequestIncomplete)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			before := countsOf(ts.srv)
			s := h.open(tt.frame)
			if tt.fin {
				s.str.Close()
			}
			if tt.status != "" {
				if got := s.status(); got != tt.status {
					t.Errorf("status %s, want %s", got, tt.status)
				}
			} else if got := s.resetCode(); got != tt.code {
				t.Errorf("stream reset with %#x, want %#x", got, tt.code)
			}
			want := before
			want.unrouted[unroutedHeaders]++
			waitCounter(t, "unrouted{headers}", ts.srv.counters.unrouted[unroutedHeaders].Load, want.unrouted[unroutedHeaders])
			if got := countsOf(ts.srv); got != want {
				t.Errorf("counters = %+v, want %+v", got, want)
			}
		})
	}
	h.t = t
	h.session().passes()
	if err := h.conn.Context().Err(); err != nil {
		t.Fatalf("connection closed: %v", context.Cause(h.conn.Context()))
	}
}

// RFC 9114 §4.1: a request stream must start with HEADERS; a DATA frame
// first is a connection error H3_FRAME_UNEXPECTED. The server goes on.
func TestDataBeforeHeadersClosesConnection(t *testing.T) {
	ts := startServer(t)
	h := dialH3(t, ts)
	before := countsOf(ts.srv)
	h.open(appendFrame(nil, frameTypeData, []byte("hello")))
	select {
	case <-h.conn.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection still open 5s after DATA before HEADERS")
	}
	ae, ok := errors.AsType[*quic.ApplicationError](context.Cause(h.conn.Context()))
	if !ok || !ae.Remote || ae.ErrorCode != quic.ApplicationErrorCode(http3.ErrCodeFrameUnexpected) {
		t.Fatalf("connection closed with %v, want H3_FRAME_UNEXPECTED from the server", context.Cause(h.conn.Context()))
	}
	want := before
	want.unrouted[unroutedHeaders]++
	want.connErrors[connErrorIndex(http3.ErrCodeFrameUnexpected)]++
	waitCounter(t, "unrouted{headers}", ts.srv.counters.unrouted[unroutedHeaders].Load, want.unrouted[unroutedHeaders])
	waitCounter(t, "frame_unexpected connection errors", ts.srv.counters.connErrors[connErrorIndex(http3.ErrCodeFrameUnexpected)].Load, want.connErrors[connErrorIndex(http3.ErrCodeFrameUnexpected)])
	if got := countsOf(ts.srv); got != want {
		t.Errorf("counters = %+v, want %+v", got, want)
	}
	dialH3(t, ts).session().passes()
}

// CONNECT-IP requests that HTTP/3 accepts but RFC 9484 does not: each is
// answered with a status and counted under refused_requests{bad_request};
// paths that are no MASQUE template get 404 under unrouted{not_found}.
func TestBadConnectIPRequestsAreRefused(t *testing.T) {
	ts := startServer(t, func(c *ServerConfig) { c.Port = 8443 })
	const authority = "127.0.0.1:8443"
	h := dialH3(t, ts)
	ok := connectIPFields(authority, testToken)
	get := []qpack.HeaderField{
		{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: authority}, {Name: ":path", Value: "/"},
	}
	const badRequest, notFound = 0, 1
	tests := []struct {
		name    string
		fields  []qpack.HeaderField
		status  string
		counter int
	}{
		{"target is no IP address", withField(ok, ":path", IPPathPrefix+"vpn.example/*/"), "400", badRequest},
		{"target prefix with host bits", withField(ok, ":path", IPPathPrefix+"198.18.0.1%2F16/*/"), "400", badRequest},
		{"ipproto 256", withField(ok, ":path", IPPathPrefix+"*/256/"), "400", badRequest},
		{"a segment too many", withField(ok, ":path", IPPathPrefix+"*/*/x/"), "400", badRequest},
		{"no trailing slash", withField(ok, ":path", IPPathPrefix+"*/*"), "400", badRequest},
		{"a query", withField(ok, ":path", IPPathPrefix+"*/*/?x=1"), "400", badRequest},
		{"an empty query", withField(ok, ":path", IPPathPrefix+"*/*/?"), "400", badRequest},
		{"target of 65 characters", withField(ok, ":path", IPPathPrefix+strings.Repeat("1", 65)+"/*/"), "400", badRequest},
		{"connect-udp on the IP path", withField(ok, ":protocol", "connect-udp"), "501", badRequest},
		{"another port in :authority", withField(ok, ":authority", "127.0.0.1:9999"), "400", badRequest},
		{"no port in :authority (443)", withField(ok, ":authority", "127.0.0.1"), "400", badRequest},
		{"no Capsule-Protocol", withField(ok, "capsule-protocol", ""), "400", badRequest},
		{"Capsule-Protocol ?0", withField(ok, "capsule-protocol", "?0"), "400", badRequest},
		{"Capsule-Protocol not a boolean", withField(ok, "capsule-protocol", "1"), "400", badRequest},
		{"GET on the IP path", withField(withField(get, ":path", ipPath(ipScope{})), "capsule-protocol", "?1"), "405", badRequest},
		{"GET /", get, "404", notFound},
		{"CONNECT-IP under another prefix", withField(ok, ":path", "/.well-known/masque/ipx/*/*/"), "404", notFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			before := countsOf(ts.srv)
			if got := h.request(tt.fields).status(); got != tt.status {
				t.Errorf("status %s, want %s", got, tt.status)
			}
			want := before
			if tt.counter == badRequest {
				want.refused[refuseBadRequest]++
			} else {
				want.unrouted[unroutedNotFound]++
			}
			if got := countsOf(ts.srv); got != want {
				t.Errorf("counters = %+v, want %+v", got, want)
			}
		})
	}
	h.t = t
	if got := ts.srv.counters.sessionsTotal.Load(); got != 0 {
		t.Errorf("sessions opened: %d, want 0", got)
	}
	// The same connection still opens a session.
	s := h.request(ok)
	if got := s.status(); got != "200" {
		t.Fatalf("well-formed request: status %s, want 200", got)
	}
}

// Datagrams whose quarter stream ID names no session on a connection that
// has one: dropped and counted (unknown_stream), the session unharmed.
// Datagrams for a request whose HEADERS are still being read are dropped
// too (unknown_stream): a request has no early-datagram queue, and holds
// no memory of ours for them, until it has parsed (DESIGN.md "Security
// invariants"; the queue itself is tested in rxpump_test.go).
func TestDatagramsForNoSession(t *testing.T) {
	ts := startServer(t)
	h := dialH3(t, ts)
	// A request whose HEADERS never complete: the server waits for them.
	frame := headersFrame(t, connectIPFields(ts.addr, "wrong-token-wrong-token"))
	pending := h.open(frame[:len(frame)-3])
	rs := h.session() // accepted after the pending stream: that one is expected now
	qsid := func(id quic.StreamID) []byte { return quicvarint.Append(nil, uint64(id/4)) }
	ok4 := append([]byte{0}, udp4(rs.v4, netip.MustParseAddr("198.18.2.2"), 1, 2, nil)...)

	before := countsOf(ts.srv)
	for _, id := range []quic.StreamID{rs.str.StreamID() + 4, rs.str.StreamID() + 400, 1 << 40} {
		if err := h.conn.SendDatagram(append(qsid(id), ok4...)); err != nil {
			t.Fatal(err)
		}
	}
	waitCounter(t, "unknown_stream drops", ts.srv.counters.drops[dropUnknownStream].Load, before.drops[dropUnknownStream]+3)

	// 40 datagrams for the unparsed request: none is kept.
	for range earlyQueueLen + 8 {
		if err := h.conn.SendDatagram(append(qsid(pending.str.StreamID()), ok4...)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	waitCounter(t, "unknown_stream drops", ts.srv.counters.drops[dropUnknownStream].Load, before.drops[dropUnknownStream]+3+earlyQueueLen+8)
	// The request ends as a refusal; nothing more is dropped.
	if _, err := pending.str.Write(frame[len(frame)-3:]); err != nil {
		t.Fatal(err)
	}
	if got := pending.status(); got != "401" {
		t.Fatalf("status %s, want 401", got)
	}
	want := before
	want.drops[dropUnknownStream] += 3 + earlyQueueLen + 8
	want.refused[refuseAuth]++
	waitCounter(t, "refused{unauthenticated}", ts.srv.counters.refused[refuseAuth].Load, want.refused[refuseAuth])
	if got := countsOf(ts.srv); got != want {
		t.Errorf("counters = %+v, want %+v", got, want)
	}
	rs.passes()
}

// RFC 9297 §2.1: a quarter stream ID that cannot be one closes the
// connection with H3_DATAGRAM_ERROR, sessions on it included; the server
// goes on.
func TestMalformedQuarterStreamIDEndsSessions(t *testing.T) {
	ts := startServer(t)
	h := dialH3(t, ts)
	h.session()
	waitSessions(t, ts.srv, 1)
	before := countsOf(ts.srv)
	if err := h.conn.SendDatagram([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.conn.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection still open 5s after a malformed datagram")
	}
	if ae, ok := errors.AsType[*quic.ApplicationError](context.Cause(h.conn.Context())); !ok || !ae.Remote || ae.ErrorCode != errCodeH3DatagramError {
		t.Fatalf("connection closed with %v, want H3_DATAGRAM_ERROR (%#x) from the server", context.Cause(h.conn.Context()), errCodeH3DatagramError)
	}
	waitSessions(t, ts.srv, 0)
	want := before
	want.connErrors[connErrorIndex(http3.ErrCodeDatagramError)]++
	waitCounter(t, "datagram_error connection errors", ts.srv.counters.connErrors[connErrorIndex(http3.ErrCodeDatagramError)].Load, want.connErrors[connErrorIndex(http3.ErrCodeDatagramError)])
	if got := countsOf(ts.srv); got != want {
		t.Errorf("counters = %+v, want %+v: a connection error, and no drop", got, want)
	}
	dialH3(t, ts).session().passes()
}

// A packet from the TUN that does not fit the session's datagram budget is
// dropped (too_big) and answered with ICMP Fragmentation Needed / Packet
// Too Big into the TUN, towards its sender (DESIGN.md hot path rule 3).
func TestPacketTooBigForTheDatagram(t *testing.T) {
	ts := startServer(t)
	h := dialH3(t, ts)
	rs := h.session()
	from4, from6 := netip.MustParseAddr("198.18.2.2"), netip.MustParseAddr("2001:db8:2::2")
	big4 := udp4(from4, rs.v4, 53, 1000, make([]byte, 1500-28))
	big4[6] |= 0x40 // DF
	binary.BigEndian.PutUint16(big4[10:], 0)
	binary.BigEndian.PutUint16(big4[10:], checksum(big4[:20], 0))
	big6 := udp6(from6, rs.v6, 53, 1000, make([]byte, 1500-48))
	for _, tt := range []struct {
		name      string
		pkt       []byte
		from, to  netip.Addr
		proto     uint8
		typ, code byte
	}{
		{"IPv4", big4, rs.v4, from4, protoICMP, 3, 4},
		{"IPv6", big6, rs.v6, from6, protoICMPv6, 2, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := countsOf(ts.srv)
			icmp := ts.srv.counters.icmpSent.Load()
			send(t, ts.dev.Outbound, tt.pkt)
			got := recv(t, ts.dev.Inbound, "the ICMP error in the TUN")
			hd := mustHeader(t, got)
			if hd.proto != tt.proto || hd.src != tt.from || hd.dst != tt.to || got[hd.hdrLen] != tt.typ || got[hd.hdrLen+1] != tt.code {
				t.Fatalf("TUN got %x, want ICMP type %d code %d from %s to %s", got[:min(len(got), 48)], tt.typ, tt.code, tt.from, tt.to)
			}
			var mtu int
			if tt.proto == protoICMP {
				mtu = int(binary.BigEndian.Uint16(got[hd.hdrLen+6:]))
			} else {
				mtu = int(binary.BigEndian.Uint32(got[hd.hdrLen+4:]))
			}
			if mtu < minIPv4MTU || mtu >= len(tt.pkt) {
				t.Errorf("ICMP says MTU %d, want the budget (< %d)", mtu, len(tt.pkt))
			}
			want := before
			want.drops[dropTooBig]++
			if got := countsOf(ts.srv); got != want {
				t.Errorf("counters = %+v, want %+v", got, want)
			}
			// Counted after the write that the TUN has seen.
			waitCounter(t, "ICMP errors sent", ts.srv.counters.icmpSent.Load, icmp+1)
		})
	}
	rs.passes()
}

// RFC 9114 §6.2.1, §7.2.4: the control stream is one, starts with a
// well-formed SETTINGS frame and stays open; a client opens no push
// stream. Each violation closes the connection with its code and counts
// under connection_errors{code}; an unknown stream type is only refused
// (§6.2.3). The server goes on.
func TestBadControlStreamsCloseConnection(t *testing.T) {
	ts := startServer(t)
	ctrl := func(b ...byte) []byte { return append([]byte{streamTypeControl}, b...) }
	settingsOK := settingsFrame(settingH3Datagram, 1)
	tests := []struct {
		name    string
		streams [][]byte // unidirectional streams, type first
		fin     bool     // end the last one after its data
		code    http3.ErrCode
	}{
		{"HTTP/2 setting", [][]byte{ctrl(settingsFrame(0x02, 0)...)}, false, http3.ErrCodeSettingsError},
		{"H3_DATAGRAM 2", [][]byte{ctrl(settingsFrame(settingH3Datagram, 2)...)}, false, http3.ErrCodeSettingsError},
		{"a setting twice", [][]byte{ctrl(settingsFrame(settingExtendedConnect, 1, settingExtendedConnect, 1)...)}, false, http3.ErrCodeSettingsError},
		{"DATA before SETTINGS", [][]byte{ctrl(appendFrame(nil, frameTypeData, []byte("x"))...)}, false, http3.ErrCodeMissingSettings},
		{"SETTINGS of 1 MiB", [][]byte{ctrl(quicvarint.Append([]byte{frameTypeSettings}, 1<<20)...)}, false, http3.ErrCodeExcessiveLoad},
		{"SETTINGS pair cut", [][]byte{ctrl(frameTypeSettings, 1, settingH3Datagram)}, false, http3.ErrCodeFrameError},
		{"two control streams", [][]byte{ctrl(settingsOK...), ctrl(settingsOK...)}, false, http3.ErrCodeStreamCreationError},
		{"a push stream", [][]byte{ctrl(settingsOK...), {streamTypePush, 0x00}}, false, http3.ErrCodeStreamCreationError},
		{"control stream closed", [][]byte{ctrl(settingsOK...)}, true, http3.ErrCodeClosedCriticalStream},
		{"client GOAWAY that rises", [][]byte{ctrl(slices.Concat(settingsOK, goAwayFrame(4), goAwayFrame(8))...)}, false, http3.ErrCodeIDError},
		// RFC 9204 §4.2: one encoder and one decoder stream, both critical.
		{"two QPACK encoder streams", [][]byte{ctrl(settingsOK...), {streamTypeQPACKEncoder}, {streamTypeQPACKEncoder}}, false, http3.ErrCodeStreamCreationError},
		{"two QPACK decoder streams", [][]byte{ctrl(settingsOK...), {streamTypeQPACKDecoder}, {streamTypeQPACKDecoder}}, false, http3.ErrCodeStreamCreationError},
		{"QPACK encoder stream closed", [][]byte{ctrl(settingsOK...), {streamTypeQPACKEncoder}}, true, http3.ErrCodeClosedCriticalStream},
		{"QPACK decoder stream closed", [][]byte{ctrl(settingsOK...), {streamTypeQPACKDecoder}}, true, http3.ErrCodeClosedCriticalStream},
		// We advertise a dynamic table of capacity 0 (RFC 9204 §4.3).
		{"dynamic table capacity 4096", [][]byte{ctrl(settingsOK...), {streamTypeQPACKEncoder, 0x3f, 0xe1, 0x1f}}, false, errCodeQPACKEncoderStream},
		{"insert with literal name", [][]byte{ctrl(settingsOK...), {streamTypeQPACKEncoder, 0x43, 'a', 'b', 'c', 0x01, 'v'}}, false, errCodeQPACKEncoderStream},
		{"section acknowledgment", [][]byte{ctrl(settingsOK...), {streamTypeQPACKDecoder, 0x84}}, false, errCodeQPACKDecoderStream},
		{"insert count increment", [][]byte{ctrl(settingsOK...), {streamTypeQPACKDecoder, 0x01}}, false, errCodeQPACKDecoderStream},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			i := connErrorIndex(tt.code)
			before := ts.srv.counters.connErrors[i].Load()
			c := dialRaw(t, ts)
			for j, b := range tt.streams {
				s, err := c.OpenUniStream()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := s.Write(b); err != nil {
					t.Fatal(err)
				}
				if tt.fin && j == len(tt.streams)-1 {
					s.Close()
				}
			}
			select {
			case <-c.Context().Done():
			case <-time.After(5 * time.Second):
				t.Fatal("connection still open after 5 s")
			}
			ae, ok := errors.AsType[*quic.ApplicationError](context.Cause(c.Context()))
			if !ok || !ae.Remote || http3.ErrCode(ae.ErrorCode) != tt.code {
				t.Fatalf("connection closed with %v, want %v from the server", context.Cause(c.Context()), tt.code)
			}
			waitCounter(t, "connection_errors{"+connErrorLabel(i)+"}", ts.srv.counters.connErrors[i].Load, before+1)
		})
	}

	// A stream of an unknown (reserved) type is refused on its own.
	h := dialH3(t, ts)
	s, err := h.conn.OpenUniStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(append(quicvarint.Append(nil, 0x1f*3+0x21), "grease"...)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("reserved stream type not refused after 5 s")
	}
	if se, ok := errors.AsType[*quic.StreamError](context.Cause(s.Context())); !ok || se.ErrorCode != quic.StreamErrorCode(http3.ErrCodeStreamCreationError) {
		t.Errorf("reserved stream ended with %v, want STOP_SENDING H3_STREAM_CREATION_ERROR", context.Cause(s.Context()))
	}
	h.session().passes()
	var total uint64
	for i := range numConnErrors {
		total += ts.srv.counters.connErrors[i].Load()
	}
	if total != uint64(len(tests)) {
		t.Errorf("connection errors = %d, want %d", total, len(tests))
	}
}
