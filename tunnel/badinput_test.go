package tunnel

import (
	"context"
	"encoding/binary"
	"net/netip"
	"runtime"
	"slices"
	"testing"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// Bad input on CONNECT-IP request streams and in HTTP datagrams, sent by
// hand over real QUIC (h3raw_test.go). Each case checks what the client
// sees, the exact counter delta and that the server (and, where the RFCs
// say so, the session or the connection) still carries packets.

// capsule builds one capsule with a raw value.
func capsule(typ uint64, v []byte) []byte {
	return appendCapsule(nil, http3.CapsuleType(typ), v)
}

// addrEntry is the raw bytes of one Assigned or Requested Address.
func addrEntry(reqID uint64, version byte, addr []byte, bits byte) []byte {
	b := quicvarint.Append(nil, reqID)
	b = append(b, version)
	b = append(b, addr...)
	return append(b, bits)
}

// allocatedDuring returns how many bytes the process allocated while f ran.
func allocatedDuring(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// RFC 9297 §3.3 and RFC 9484 §4.7: a malformed capsule, or a stream that
// ends inside one, aborts the request stream as a malformed message
// (H3_MESSAGE_ERROR). The session ends; the connection and the server do
// not, and the next session on the same connection carries packets.
func TestMalformedCapsuleResetsSession(t *testing.T) {
	ts := startServer(t)
	h := dialH3(t, ts)
	v4 := netip.MustParseAddr("100.64.0.9").AsSlice()
	v6 := netip.MustParseAddr("fd6d:6173:7175:6500::9").AsSlice()
	route := func(version byte, start, end string, proto byte) []byte {
		b := append([]byte{version}, netip.MustParseAddr(start).AsSlice()...)
		b = append(b, netip.MustParseAddr(end).AsSlice()...)
		return append(b, proto)
	}
	tests := []struct {
		name string
		data []byte
		fin  bool // end the stream after data
		// unknown: the cut capsule had an unknown type, counted when
		// its skipping began.
		unknown bool
	}{
		{"type varint cut by the stream's end", []byte{0x80, 0x00}, true, false},
		{"length varint cut by the stream's end", []byte{0x02, 0x40}, true, false},
		{"value beyond the stream's end", append([]byte{0x02, 20}, addrEntry(1, 4, v4, 32)...), true, false},
		{"DATAGRAM value beyond the stream's end", []byte{0x00, 0x30, 0x00, 0x45}, true, false},
		{"unknown type's value beyond the stream's end", []byte{0x17, 0x10, 1, 2, 3}, true, true},
		{"ADDRESS_REQUEST prefix length 33", capsule(2, addrEntry(1, 4, v4, 33)), false, false},
		{"ADDRESS_REQUEST prefix length 129", capsule(2, addrEntry(1, 6, v6, 129)), false, false},
		{"ADDRESS_REQUEST IP version 5", capsule(2, addrEntry(1, 5, v4, 32)), false, false},
		{"ADDRESS_REQUEST bits past the prefix", capsule(2, addrEntry(1, 4, v4, 24)), false, false},
		{"ADDRESS_REQUEST address cut short", capsule(2, addrEntry(1, 6, v4, 32)), false, false},
		{"ADDRESS_REQUEST request ID 0", capsule(2, addrEntry(0, 4, v4, 32)), false, false},
		{"ADDRESS_REQUEST without addresses", capsule(2, nil), false, false},
		{"ADDRESS_ASSIGN prefix length 200", capsule(1, addrEntry(0, 4, v4, 200)), false, false},
		{"ADDRESS_ASSIGN IP version 0", capsule(1, addrEntry(0, 0, v4, 32)), false, false},
		{"ROUTE_ADVERTISEMENT start after end", capsule(3, route(4, "198.18.0.9", "198.18.0.1", 0)), false, false},
		{"ROUTE_ADVERTISEMENT IPv6 before IPv4", capsule(3, slices.Concat(route(6, "::", "::ffff", 0), route(4, "0.0.0.0", "1.0.0.0", 0))), false, false},
		{"ROUTE_ADVERTISEMENT overlapping", capsule(3, slices.Concat(route(4, "10.0.0.0", "10.0.1.0", 0), route(4, "10.0.1.0", "10.0.2.0", 0))), false, false},
		{"ROUTE_ADVERTISEMENT IP version 5", capsule(3, route(4, "10.0.0.0", "10.0.1.0", 0)[1:]), false, false},
		{"DNS_ASSIGN count beyond the capsule", capsule(uint64(capsuleDNSAssign), []byte{0x05, 0x00}), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			rs := h.session()
			waitSessions(t, ts.srv, 1)
			before := capsuleDrops(ts.srv)
			rs.writeData(tt.data)
			if tt.fin {
				rs.str.Close()
			}
			if code := rs.resetCode(); code != errCodeH3MessageError {
				t.Errorf("stream reset with %#x, want H3_MESSAGE_ERROR (%#x)", code, errCodeH3MessageError)
			}
			want := before
			want[capsuleDropMalformed]++
			if tt.unknown {
				want[capsuleDropUnknown]++
			}
			if got := capsuleDrops(ts.srv); got != want {
				t.Errorf("capsule drops = %v, want %v", got, want)
			}
			waitSessions(t, ts.srv, 0)
			// The connection survives: the next session on it works.
			next := h.session()
			next.passes()
			next.str.CancelRead(0)
			next.str.CancelWrite(0)
			waitSessions(t, ts.srv, 0)
		})
	}
	if err := h.conn.Context().Err(); err != nil {
		t.Fatalf("connection closed: %v", context.Cause(h.conn.Context()))
	}
}

// A control capsule longer than the server reads (maxCapsuleLen) is not
// read at all: the stream is reset with H3_EXCESSIVE_LOAD as soon as its
// header arrives, and nothing near the announced size is allocated.
func TestOversizedCapsuleResetsSession(t *testing.T) {
	ts := startServer(t)
	h := dialH3(t, ts)
	tests := []struct {
		name string
		typ  http3.CapsuleType
		len  uint64
	}{
		{"ADDRESS_REQUEST of 1 GiB", capsuleAddressRequest, 1 << 30},
		{"ROUTE_ADVERTISEMENT one byte too long", capsuleRouteAdvertisement, maxCapsuleLen + 1},
		{"ADDRESS_ASSIGN of 2^62-1 bytes", capsuleAddressAssign, quicvarint.Max},
		{"DNS_ASSIGN of 1 GiB", capsuleDNSAssign, 1 << 30},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			rs := h.session()
			waitSessions(t, ts.srv, 1)
			before := capsuleDrops(ts.srv)
			// The header and the start of a value: 4 KiB of valid
			// addresses, which the server must not wait for the rest of.
			head := quicvarint.Append(quicvarint.Append(nil, uint64(tt.typ)), tt.len)
			var value []byte
			for len(value) < 4<<10 {
				value = append(value, addrEntry(1, 4, []byte{100, 64, 0, 9}, 32)...)
			}
			var code quic.StreamErrorCode
			alloc := allocatedDuring(func() {
				rs.writeData(append(head, value...))
				code = rs.resetCode()
			})
			if code != quic.StreamErrorCode(http3.ErrCodeExcessiveLoad) {
				t.Errorf("stream reset with %#x, want H3_EXCESSIVE_LOAD (%#x)", code, http3.ErrCodeExcessiveLoad)
			}
			if alloc > 64<<20 {
				t.Errorf("%d bytes allocated while a %d-byte capsule was refused", alloc, tt.len)
			}
			want := before
			want[capsuleDropTooLarge]++
			if got := capsuleDrops(ts.srv); got != want {
				t.Errorf("capsule drops = %v, want %v", got, want)
			}
			waitSessions(t, ts.srv, 0)
			next := h.session()
			next.passes()
			next.str.CancelRead(0)
			next.str.CancelWrite(0)
			waitSessions(t, ts.srv, 0)
		})
	}
}

// RFC 9297 §3.2: capsules of unknown or reserved types (grease: 0x29*N +
// 0x17) are skipped, whatever their length, and the session goes on: the
// capsule after them is answered and packets still pass.
func TestUnknownCapsulesAreSkipped(t *testing.T) {
	ts := startServer(t)
	h := dialH3(t, ts)
	rs := h.session()
	before := capsuleDrops(ts.srv)
	unknown := [][]byte{
		capsule(0x17, nil),                       // grease N=0, empty
		capsule(0x29+0x17, []byte("grease")),     // grease N=1
		capsule(0x29*1000000+0x17, seq(1000)),    // grease, 4-byte type
		capsule(0x29*(1<<50)+0x17, seq(3)),       // grease, 8-byte type
		capsule(0x274c0fbc, seq(9)),              // PREF64: connect-ip-go's, not ours
		capsule(0x3f, []byte{0x02, 0x05, 0, 0}),  // a value that looks like a capsule
		capsule(quicvarint.Max, seq(16)),         // the largest type
		capsule(0x1ace79ed, seq(2)),              // next to DNS_ASSIGN
		capsule(0x04, seq(40)),                   // the next CONNECT-IP type, unassigned
		capsule(0x29*7+0x17, make([]byte, 5000)), // longer than a DATA frame below
	}
	stream := slices.Concat(unknown...)
	// Across DATA frames cut at odd places.
	for len(stream) > 0 {
		n := min(len(stream), 777)
		rs.writeData(stream[:n])
		stream = stream[n:]
	}
	// The parser is still in step: an ADDRESS_REQUEST for any IPv4
	// address is answered with the session's address and its IPv6 one.
	rs.writeData(capsule(uint64(capsuleAddressRequest), addrEntry(7, 4, []byte{0, 0, 0, 0}, 32)))
	p := http3.NewCapsuleParser(rs.data)
	typ, b := rs.nextCapsule(p)
	got, err := parseAddresses(b)
	want := []addressEntry{{7, netip.PrefixFrom(rs.v4, 32)}, {0, netip.PrefixFrom(rs.v6, 128)}}
	if typ != capsuleAddressAssign || err != nil || !slices.Equal(got, want) {
		t.Fatalf("answer = type %#x %v (%v), want ADDRESS_ASSIGN %v", typ, got, err, want)
	}
	wantDrops := before
	wantDrops[capsuleDropUnknown] += uint64(len(unknown))
	if got := capsuleDrops(ts.srv); got != wantDrops {
		t.Errorf("capsule drops = %v, want %v", got, wantDrops)
	}
	rs.passes()

	// One that announces 1 GiB: the server reads through what comes
	// without holding it, and the session keeps carrying packets.
	alloc := allocatedDuring(func() {
		rs.writeData(quicvarint.Append(quicvarint.Append(nil, 0x29*3+0x17), 1<<30))
		chunk := make([]byte, 64<<10)
		for range 16 {
			rs.writeData(chunk)
		}
		waitCounter(t, "unknown_type capsule drops", func() uint64 { return ts.srv.counters.capsuleDrops[capsuleDropUnknown].Load() }, wantDrops[capsuleDropUnknown]+1)
		rs.passes()
	})
	if alloc > 64<<20 {
		t.Errorf("%d bytes allocated while skipping a 1 GiB capsule", alloc)
	}
	if got := ts.srv.Sessions(); got != 1 {
		t.Errorf("sessions = %d, want 1", got)
	}
}

// RFC 9297 §3.5: a DATAGRAM capsule carries an HTTP datagram on the
// stream. The server takes it like a QUIC datagram: the same checks, the
// same counters, then the TUN; the session goes on whatever it carried.
func TestDatagramCapsule(t *testing.T) {
	ts := startServer(t)
	h := dialH3(t, ts)
	rs := h.session()
	target := netip.MustParseAddr("198.18.2.2")
	ok4 := udp4(rs.v4, target, 1000, 53, []byte("in a capsule"))
	ok6 := udp6(rs.v6, netip.MustParseAddr("2001:db8:2::2"), 1000, 53, []byte("in a capsule"))
	// Larger than any QUIC datagram and any TUN MTU in use: the capsule
	// is the only way to send it, and the kernel's forwarding, not the
	// tunnel, answers it with Fragmentation Needed if it must.
	jumbo := udp4(rs.v4, target, 1000, 53, make([]byte, 9000))
	const accepted = dropReason(255)
	tests := []struct {
		name  string
		value []byte
		want  dropReason
		pkt   []byte // the packet the TUN gets, when accepted
	}{
		{"IPv4 packet", append([]byte{0}, ok4...), accepted, ok4},
		{"IPv6 packet, two-byte context ID", append([]byte{0x40, 0}, ok6...), accepted, ok6},
		{"9000-byte packet", append([]byte{0}, jumbo...), accepted, jumbo},
		{"context ID 1", append([]byte{1}, ok4...), dropContextID, nil},
		{"spoofed source", append([]byte{0}, udp4(netip.MustParseAddr("100.64.0.77"), target, 1, 2, nil)...), dropSourceSpoof, nil},
		{"empty", nil, dropMalformed, nil},
		{"context ID only", []byte{0}, dropMalformed, nil},
		{"truncated IPv4 header", append([]byte{0}, ok4[:19]...), dropMalformed, nil},
		{"70000 bytes: more than an IP packet", make([]byte, 70000), dropMalformed, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rx := ts.srv.counters.rxPackets.Load()
			capsules := ts.srv.counters.datagramCapsules.Load()
			drops := dropCounts(&ts.srv.counters)
			rs.writeData(capsule(0, tt.value))
			waitCounter(t, "datagram capsules", ts.srv.counters.datagramCapsules.Load, capsules+1)
			wantDrops, wantRx := drops, rx
			if tt.want == accepted {
				wantRx++
				if got := recv(t, ts.dev.Inbound, "the capsule's packet at the server TUN"); string(got) != string(tt.pkt) {
					t.Fatalf("server TUN got %d bytes %x..., want the capsule's %d-byte packet", len(got), got[:min(len(got), 40)], len(tt.pkt))
				}
			} else {
				wantDrops[tt.want]++
			}
			if got := ts.srv.counters.rxPackets.Load(); got != wantRx {
				t.Errorf("rx packets = %d, want %d", got, wantRx)
			}
			if got := dropCounts(&ts.srv.counters); got != wantDrops {
				t.Errorf("drops = %v, want %v", got, wantDrops)
			}
		})
	}
	select {
	case p := <-ts.dev.Inbound:
		t.Errorf("a dropped capsule's packet reached the TUN: %x", p[:min(len(p), 40)])
	default:
	}
	rs.passes()
	if got := ts.srv.Sessions(); got != 1 {
		t.Errorf("sessions = %d, want 1", got)
	}
}

// HTTP datagrams of a live session whose payload is bad: each is dropped
// and counted under one reason, and the session keeps carrying packets.
func TestBadDatagramsOfASession(t *testing.T) {
	ts := startServer(t)
	h := dialH3(t, ts)
	rs := h.session()
	target := netip.MustParseAddr("198.18.2.2")
	ok4 := udp4(rs.v4, target, 1000, 53, []byte("0123456789"))
	ok6 := udp6(rs.v6, netip.MustParseAddr("2001:db8:2::2"), 1000, 53, []byte("0123456789"))
	set16 := func(p []byte, off int, v uint16) []byte {
		p = slices.Clone(p)
		binary.BigEndian.PutUint16(p[off:], v)
		return p
	}
	tests := []struct {
		name    string
		payload []byte // context ID first
		want    dropReason
	}{
		{"context ID 1", append([]byte{1}, ok4...), dropContextID},
		{"context ID 63", append([]byte{0x3f}, ok4...), dropContextID},
		{"context ID 1 in two bytes", append([]byte{0x40, 0x01}, ok4...), dropContextID},
		{"context ID 2^40 in eight bytes", append([]byte{0xc0, 0, 0, 0x01, 0, 0, 0, 0}, ok6...), dropContextID},
		{"context ID cut short", []byte{0x40}, dropMalformed},
		{"context ID only", []byte{0}, dropMalformed},
		{"IPv4 header of 19 bytes", append([]byte{0}, ok4[:19]...), dropMalformed},
		{"IPv6 header of 39 bytes", append([]byte{0}, ok6[:39]...), dropMalformed},
		{"IPv4 total length beyond the datagram", append([]byte{0}, set16(ok4, 2, uint16(len(ok4)+1))...), dropMalformed},
		{"IPv4 total length below the header", append([]byte{0}, set16(ok4, 2, 19)...), dropMalformed},
		{"IPv4 header length 4 words", append([]byte{0, 0x44}, ok4[1:]...), dropMalformed},
		{"IPv6 payload length beyond the datagram", append([]byte{0}, set16(ok6, 4, uint16(len(ok6)-40+1))...), dropMalformed},
		{"IP version 5", append([]byte{0, 0x55}, ok4[1:]...), dropMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			drops := dropCounts(&ts.srv.counters)
			rs.sendDatagram(tt.payload)
			waitCounter(t, tt.want.String()+" drops", ts.srv.counters.drops[tt.want].Load, drops[tt.want]+1)
			want := drops
			want[tt.want]++
			if got := dropCounts(&ts.srv.counters); got != want {
				t.Errorf("drops = %v, want %v", got, want)
			}
		})
	}
	// A length field that is shorter than the datagram is not an error:
	// the packet is what the header says, the rest is cut (RFC 791).
	rx := ts.srv.counters.rxPackets.Load()
	rs.sendDatagram(slices.Concat([]byte{0}, ok4, []byte("trailer")))
	if got := recv(t, ts.dev.Inbound, "the packet without its trailer"); string(got) != string(ok4) {
		t.Errorf("server TUN got %x, want %x", got, ok4)
	}
	if got := ts.srv.counters.rxPackets.Load(); got != rx+1 {
		t.Errorf("rx packets = %d, want %d", got, rx+1)
	}
	rs.passes()
	if ts.srv.Sessions() != 1 || h.conn.Context().Err() != nil {
		t.Errorf("sessions = %d, connection error %v; want 1 and none", ts.srv.Sessions(), h.conn.Context().Err())
	}
}
