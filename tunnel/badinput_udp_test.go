package tunnel

import (
	"context"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/masque-vpn/masque/policy"
	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go/quicvarint"
)

// Bad input on CONNECT-UDP flows (RFC 9298), sent by hand over real QUIC.

// startUDPBadServer runs the test server with CONNECT-UDP open to the echo
// targets on 127.0.0.2.
func startUDPBadServer(t *testing.T) *testServer {
	t.Helper()
	return startServer(t, func(c *ServerConfig) {
		d, err := policy.NewDestinations(policy.DestinationsConfig{
			ServerAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
			Allow:       []netip.Prefix{netip.PrefixFrom(udpTargetAddr, 32)},
		})
		if err != nil {
			t.Fatal(err)
		}
		c.Destinations = d
		c.UDP.Lookup = fakeLookup
	})
}

// udpFlowFields are the fields of a CONNECT-UDP request to target.
func udpFlowFields(authority string, target netip.AddrPort) []qpack.HeaderField {
	return []qpack.HeaderField{
		{Name: ":method", Value: "CONNECT"},
		{Name: ":protocol", Value: "connect-udp"},
		{Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: authority},
		{Name: ":path", Value: UDPPathPrefix + target.Addr().String() + "/" + strconv.Itoa(int(target.Port())) + "/"},
		{Name: "capsule-protocol", Value: "?1"},
		{Name: "authorization", Value: "Bearer " + testToken},
	}
}

// rawFlow is a CONNECT-UDP flow opened by hand.
type rawFlow struct {
	*rawStream
	qsid []byte
}

func (h *rawH3) flow(target netip.AddrPort) *rawFlow {
	h.t.Helper()
	s := h.request(udpFlowFields(h.ts.addr, target))
	if got := s.status(); got != "200" {
		h.t.Fatalf("CONNECT-UDP status %s, want 200", got)
	}
	return &rawFlow{rawStream: s, qsid: quicvarint.Append(nil, uint64(s.str.StreamID()/4))}
}

// echoes checks that a payload sent in an HTTP datagram comes back from the
// echo target.
func (f *rawFlow) echoes(payload string) {
	f.h.t.Helper()
	t := f.h.t
	if err := f.h.conn.SendDatagram(slices.Concat(f.qsid, []byte{0}, []byte(payload))); err != nil {
		t.Fatal(err)
	}
	f.waitEcho(payload)
}

func (f *rawFlow) waitEcho(payload string) {
	f.h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	want := string(slices.Concat(f.qsid, []byte{0}, []byte(payload)))
	for {
		d, err := f.h.conn.ReceiveDatagram(ctx)
		if err != nil {
			f.h.t.Fatalf("no echo of %q: %v", payload, err)
		}
		if string(d) == want {
			return
		}
	}
}

// RFC 9297 §3.2, §3.5 on a CONNECT-UDP stream: unknown capsules are
// skipped and counted, DATAGRAM capsules carry UDP payloads like HTTP
// datagrams; bad context IDs are dropped and counted, in capsules and in
// datagrams; the flow goes on.
func TestUDPFlowBadCapsulesAndDatagrams(t *testing.T) {
	ts := startUDPBadServer(t)
	echo := startEcho(t, nil)
	h := dialH3(t, ts)
	f := h.flow(echo)
	f.echoes("first")
	c := &ts.srv.counters.udp
	// The echo can come back before the flow counts what it sent.
	waitCounter(t, "udp datagrams up", c.upDatagrams.Load, 1)
	const up = 1

	f.writeData(slices.Concat(
		capsule(0x17, nil), capsule(0x29*5+0x17, seq(300)), capsule(0x02, seq(7)), // skipped
		capsule(0, []byte("\x00in a capsule")),   // forwarded
		capsule(0, []byte("\x05context 5")),      // unknown context ID
		capsule(0, nil),                          // no context ID
		capsule(0, make([]byte, smallBufSize+1)), // larger than any datagram
	))
	f.waitEcho("in a capsule")
	for _, d := range [][]byte{
		slices.Concat(f.qsid, []byte{0x07}, []byte("context 7")),
		slices.Concat(f.qsid, []byte{0x40}), // context ID cut short
	} {
		if err := h.conn.SendDatagram(d); err != nil {
			t.Fatal(err)
		}
	}
	// Capsules and datagrams take two goroutines: wait for each count.
	waitCounter(t, "udp malformed drops", c.drops[udpDropMalformed].Load, 2)
	waitCounter(t, "udp unknown_context_id drops", c.drops[udpDropContextID].Load, 2)
	waitCounter(t, "udp too_big drops", c.drops[udpDropTooBig].Load, 1)
	waitCounter(t, "udp unknown_type capsule drops", c.capsuleDrops[capsuleDropUnknown].Load, 3)
	waitCounter(t, "udp datagrams up", c.upDatagrams.Load, up+1)
	f.echoes("still here")
	if got := c.flows.Load(); got != 1 {
		t.Errorf("flows = %d, want 1", got)
	}
}

// RFC 9297 §3.3: a CONNECT-UDP stream that ends inside a capsule is reset
// with H3_MESSAGE_ERROR; the connection and the server go on.
func TestUDPFlowMalformedCapsuleResetsStream(t *testing.T) {
	ts := startUDPBadServer(t)
	echo := startEcho(t, nil)
	h := dialH3(t, ts)
	c := &ts.srv.counters.udp
	for i, data := range [][]byte{
		{0x00, 0x20, 0x00, 'x'}, // DATAGRAM value beyond the end
		{0x17, 0x09, 1},         // unknown type's value beyond the end
		{0x40},                  // type cut
		{0x00, 0x80, 0x01},      // length cut
	} {
		f := h.flow(echo)
		f.echoes("before")
		f.writeData(data)
		f.str.Close()
		if code := f.resetCode(); code != errCodeH3MessageError {
			t.Errorf("%x: stream reset with %#x, want H3_MESSAGE_ERROR (%#x)", data, code, errCodeH3MessageError)
		}
		if got := c.capsuleDrops[capsuleDropMalformed].Load(); got != uint64(i+1) {
			t.Errorf("%x: udp malformed capsule drops = %d, want %d", data, got, i+1)
		}
		waitCounter(t, "udp flows", func() uint64 { return uint64(c.flows.Load()) }, 0)
	}
	h.flow(echo).echoes("after")
}
