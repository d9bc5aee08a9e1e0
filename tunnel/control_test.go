package tunnel

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/masque-vpn/masque/policy"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// discardDevice takes every write; it has nothing to read.
type discardDevice struct{}

func (discardDevice) Read([][]byte, []int, int) (int, error) { return 0, io.EOF }
func (discardDevice) Write(b [][]byte, _ int) (int, error)   { return len(b), nil }
func (discardDevice) BatchSize() int                         { return 1 }

// newControlTestSession returns a server session with pools, destination
// policy, its receive path started and registered in a mux, as serveIP
// leaves it before run: what readCapsules needs, without QUIC.
func newControlTestSession(t testing.TB) *session {
	t.Helper()
	p4, err := policy.NewPool(netip.MustParsePrefix("100.64.0.0/29"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	p6, err := policy.NewPool(netip.MustParsePrefix("fd00:1::/125"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	d, err := policy.NewDestinations(policy.DestinationsConfig{
		ClientPrefixes: []netip.Prefix{p4.Prefix(), p6.Prefix()},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{
		cfg:    ServerConfig{Pool4: p4, Pool6: p6, Destinations: d, Device: discardDevice{}},
		router: newIPRouter(),
		log:    slog.New(slog.DiscardHandler),
	}
	srv.dests.Store(d)
	ss := &session{srv: srv, id: 1, identity: "alice", log: srv.log}
	if err := ss.acquireAddresses(); err != nil {
		t.Fatal(err)
	}
	srv.router.add(ss, ss.addrs()...)
	ss.mux = newDgramMux(nil, &srv.counters)
	ss.startReceiver()
	ss.mux.register(0, ss)
	t.Cleanup(func() {
		ss.mux.forget(0)
		ss.stopReceiver()
		ss.releaseAddresses()
	})
	return ss
}

// FuzzSessionCapsules feeds any byte stream to the server's capsule reader:
// it stops with the stream's end or a protocol error, never a panic; every
// answer is a well-formed ADDRESS_ASSIGN; the session keeps one address of
// each pool; and each DATAGRAM capsule moves exactly one data counter.
func FuzzSessionCapsules(f *testing.F) {
	ok4 := ipv4Packet(netip.MustParseAddr("100.64.0.2"), testDst4, protoUDP, seq(8))
	f.Add(capsule(uint64(capsuleAddressRequest), addrEntry(1, 4, []byte{0, 0, 0, 0}, 32)))
	f.Add(capsule(uint64(capsuleAddressRequest), addrEntry(3, 4, []byte{100, 64, 0, 5}, 32)))
	f.Add(capsule(uint64(capsuleAddressRequest), addrEntry(9, 6, netip.MustParseAddr("fd00:1::6").AsSlice(), 128)))
	f.Add(append(capsule(0, append([]byte{0}, ok4...)), capsule(0, []byte{1, 0x45})...))
	f.Add(append(capsule(0x17, seq(10)), capsule(uint64(capsuleRouteAdvertisement), nil)...))
	f.Add(quicvarint.Append([]byte{0x02}, 1<<30))
	f.Add([]byte{0x00, 0x05, 0x00})
	f.Fuzz(func(t *testing.T, in []byte) {
		ss := newControlTestSession(t)
		c := &ss.srv.counters
		var out bytes.Buffer
		err := ss.readCapsules(bytes.NewReader(in), &out)
		switch {
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
			errors.Is(err, errMalformedCapsule), errors.Is(err, errCapsuleTooLarge):
		default:
			t.Fatalf("readCapsules(%x) = %v, want the end of the input or a protocol error", in, err)
		}
		p := http3.NewCapsuleParser(&out)
		for {
			typ, r, err := p.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil || typ != capsuleAddressAssign {
				t.Fatalf("answer capsule type %#x, %v; want ADDRESS_ASSIGN", typ, err)
			}
			b, err := capsuleBytes(r)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := parseAddresses(b); err != nil {
				t.Fatalf("answer %x does not parse: %v", b, err)
			}
		}
		a := ss.addr.Load()
		if !ss.srv.cfg.Pool4.Prefix().Contains(a.v4) || !ss.srv.cfg.Pool6.Prefix().Contains(a.v6) {
			t.Fatalf("session holds %v and %v, outside its pools", a.v4, a.v6)
		}
		for _, addr := range []netip.Addr{a.v4, a.v6} {
			if ss.srv.router.lookup(addr) != ss {
				t.Fatalf("router does not send %v to the session", addr)
			}
		}
		var moved uint64
		for _, v := range dropCounts(c) {
			moved += v
		}
		moved += c.rxPackets.Load()
		if got := c.datagramCapsules.Load(); moved != got {
			t.Fatalf("%d DATAGRAM capsules moved %d data counters", got, moved)
		}
	})
}
