package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/masque-vpn/masque/policy"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
	"golang.org/x/time/rate"
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
	// A walk: several changes asked in one capsule, then again.
	walk := capsule(uint64(capsuleAddressRequest), cat(addrEntry(1, 4, []byte{100, 64, 0, 3}, 32),
		addrEntry(2, 4, []byte{100, 64, 0, 4}, 32), addrEntry(3, 6, netip.MustParseAddr("fd00:1::5").AsSlice(), 128),
		addrEntry(4, 4, []byte{100, 64, 0, 5}, 32), addrEntry(5, 6, netip.MustParseAddr("fd00:1::6").AsSlice(), 128)))
	f.Add(cat(walk, walk, walk))
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
		// At most one change per family per ADDRESS_REQUEST (the input's
		// 0x02 bytes bound their number from above), and the address
		// left is free at once: each pool holds one address.
		if ch, asked := c.addrChanges[familyIPv4].Load()+c.addrChanges[familyIPv6].Load(), uint64(bytes.Count(in, []byte{byte(capsuleAddressRequest)})); ch > 2*asked {
			t.Fatalf("%d address changes for at most %d ADDRESS_REQUEST capsules", ch, asked)
		}
		for _, pool := range []*policy.Pool{ss.srv.cfg.Pool4, ss.srv.cfg.Pool6} {
			if in, l := pool.InUse(), pool.Leased(); in != 1 || l != 1 {
				t.Fatalf("pool %s: InUse() = %d, Leased() = %d, want 1, 1", pool.Prefix(), in, l)
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

// TestAnswerAddressRequest checks the answer to ADDRESS_REQUEST capsules
// (RFC 9484 §4.7.2): one entry per request in order, at most one change
// per family per capsule, the change rate, the counters, and that the
// address left is free at once.
func TestAnswerAddressRequest(t *testing.T) {
	v4 := func(last byte) []byte { return []byte{100, 64, 0, last} }
	v6 := func(last byte) []byte { return netip.AddrFrom16([16]byte{0xfd, 0, 0, 1, 15: last}).AsSlice() }
	req := func(es ...[]byte) []byte {
		var v []byte
		for _, e := range es {
			v = append(v, e...)
		}
		return capsule(uint64(capsuleAddressRequest), v)
	}
	tests := []struct {
		name     string
		limiter  *rate.Limiter // nil: the session's default
		capsules [][]byte
		want     []string // the last answer: "id prefix"
		changes  [numFamilies]uint64
		refused  map[addrOutcome]uint64
	}{
		{
			name: "one change per family per capsule",
			capsules: [][]byte{req(
				addrEntry(1, 4, v4(5), 32), addrEntry(2, 4, v4(6), 32), addrEntry(3, 6, v6(5), 128),
				addrEntry(4, 6, v6(6), 128), addrEntry(5, 4, v4(4), 32),
			)},
			want:    []string{"1 100.64.0.5/32", "2 100.64.0.5/32", "3 fd00:1::5/128", "4 fd00:1::5/128", "5 100.64.0.5/32"},
			changes: [numFamilies]uint64{1, 1},
			refused: map[addrOutcome]uint64{addrRefusedPerCapsule: 3},
		},
		{
			name: "the held address is no change",
			capsules: [][]byte{req(
				addrEntry(1, 4, v4(2), 32), addrEntry(2, 4, []byte{0, 0, 0, 0}, 32), addrEntry(3, 4, v4(6), 32),
			)},
			want:    []string{"1 100.64.0.2/32", "2 100.64.0.2/32", "3 100.64.0.6/32", "0 fd00:1::2/128"},
			changes: [numFamilies]uint64{1, 0},
		},
		{
			name: "unavailable, then a change",
			capsules: [][]byte{req(
				addrEntry(1, 4, []byte{10, 0, 0, 1}, 32), addrEntry(2, 4, v4(1), 32), addrEntry(3, 4, v4(0), 24),
				addrEntry(4, 4, v4(3), 32),
			)},
			want:    []string{"1 100.64.0.2/32", "2 100.64.0.2/32", "3 100.64.0.2/32", "4 100.64.0.3/32", "0 fd00:1::2/128"},
			changes: [numFamilies]uint64{1, 0},
			refused: map[addrOutcome]uint64{addrRefusedUnavailable: 3},
		},
		{
			name:    "rate",
			limiter: rate.NewLimiter(0, 1), // one change, ever
			capsules: [][]byte{
				req(addrEntry(1, 4, v4(5), 32)),
				req(addrEntry(2, 4, v4(6), 32), addrEntry(3, 6, v6(6), 128)),
			},
			want:    []string{"2 100.64.0.5/32", "3 fd00:1::2/128"},
			changes: [numFamilies]uint64{1, 0},
			refused: map[addrOutcome]uint64{addrRefusedRate: 2},
		},
		{
			name:    "burst",
			limiter: rate.NewLimiter(0, addrChangeBurst), // the default burst, no refill
			capsules: [][]byte{
				req(addrEntry(1, 4, v4(3), 32)), req(addrEntry(2, 4, v4(4), 32)), req(addrEntry(3, 4, v4(5), 32)),
				req(addrEntry(4, 4, v4(6), 32)), req(addrEntry(5, 4, v4(2), 32)), req(addrEntry(6, 4, v4(3), 32)),
			},
			want:    []string{"6 100.64.0.6/32", "0 fd00:1::2/128"},
			changes: [numFamilies]uint64{addrChangeBurst, 0},
			refused: map[addrOutcome]uint64{addrRefusedRate: 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ss := newControlTestSession(t)
			ss.changes = tt.limiter
			var in []byte
			for _, c := range tt.capsules {
				in = append(in, c...)
			}
			var out bytes.Buffer
			if err := ss.readCapsules(bytes.NewReader(in), &out); !errors.Is(err, io.EOF) {
				t.Fatalf("readCapsules = %v, want EOF", err)
			}
			var last []string
			p := http3.NewCapsuleParser(&out)
			for {
				typ, r, err := p.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil || typ != capsuleAddressAssign {
					t.Fatalf("answer capsule type %#x, %v; want ADDRESS_ASSIGN", typ, err)
				}
				b, _ := capsuleBytes(r)
				es, err := parseAddresses(b)
				if err != nil {
					t.Fatal(err)
				}
				last = last[:0]
				for _, e := range es {
					last = append(last, fmt.Sprint(e.reqID, " ", e.prefix))
				}
			}
			if d := cmp.Diff(tt.want, last); d != "" {
				t.Errorf("last answer (-want +got):\n%s", d)
			}
			c := &ss.srv.counters
			for f := range numFamilies {
				if got := c.addrChanges[f].Load(); got != tt.changes[f] {
					t.Errorf("%s changes = %d, want %d", familyNames[f], got, tt.changes[f])
				}
			}
			for o := range numAddrOutcomes {
				if addrRefusalNames[o] == "" {
					continue
				}
				if got := c.addrRefused[o].Load(); got != tt.refused[o] {
					t.Errorf("refused %s = %d, want %d", addrRefusalNames[o], got, tt.refused[o])
				}
			}
			// The address left is free at once: each pool holds only the
			// session's address.
			for _, pool := range []*policy.Pool{ss.srv.cfg.Pool4, ss.srv.cfg.Pool6} {
				if in, l := pool.InUse(), pool.Leased(); in != 1 || l != 1 {
					t.Errorf("pool %s: InUse() = %d, Leased() = %d, want 1, 1", pool.Prefix(), in, l)
				}
			}
			a := ss.addr.Load()
			for _, addr := range []netip.Addr{a.v4, a.v6} {
				if ss.srv.router.lookup(addr) != ss {
					t.Errorf("router does not send %v to the session", addr)
				}
			}
		})
	}
}
