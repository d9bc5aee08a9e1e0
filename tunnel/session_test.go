package tunnel

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/masque-vpn/masque/policy"
	"github.com/quic-go/quic-go/http3"
)

var (
	sessAddr4 = netip.MustParseAddr("100.64.0.2")
	sessAddr6 = netip.MustParseAddr("fd00:1::2")
)

// newCheckSession returns a session of a server that has only what
// checkInbound needs: destination policy and counters. The server has no
// address pools, so a denied packet finds no gateway and sendICMP returns
// before it touches the session's stream (nil here).
func newCheckSession(t testing.TB, scope ipScope) *session {
	t.Helper()
	d, err := policy.NewDestinations(policy.DestinationsConfig{
		ServerAddrs:    []netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("2001:db8::1")},
		ClientPrefixes: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd00:1::/64")},
	})
	if err != nil {
		t.Fatalf("NewDestinations: %v", err)
	}
	srv := &Server{cfg: ServerConfig{Destinations: d}}
	srv.dests.Store(d)
	ss := &session{srv: srv, id: 1, scope: scope}
	ss.addr.Store(&sessionAddrs{v4: sessAddr4, v6: sessAddr6})
	return ss
}

func cat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

// dropCounts returns the drop counters of c.
func dropCounts(c *counters) [numDropReasons]uint64 {
	var n [numDropReasons]uint64
	for r := range numDropReasons {
		n[r] = c.drops[r].Load()
	}
	return n
}

func TestCheckInbound(t *testing.T) {
	a := netip.MustParseAddr
	ctx0 := []byte{0}
	udp4 := func(src, dst netip.Addr) []byte { return ipv4Packet(src, dst, protoUDP, seq(16)) }
	udp6 := func(src, dst netip.Addr) []byte { return ipv6Packet(src, dst, protoUDP, seq(16)) }
	ok4 := udp4(sessAddr4, testDst4)
	ok6 := udp6(sessAddr6, testDst6)
	const accepted = dropReason(255)
	tests := []struct {
		name  string
		scope ipScope
		d     []byte
		want  dropReason // accepted, or the counter that must move
		pkt   []byte     // the packet copied out when accepted
	}{
		{"v4 context 0, one byte", ipScope{}, cat(ctx0, ok4), accepted, ok4},
		{"v6 context 0, one byte", ipScope{}, cat(ctx0, ok6), accepted, ok6},
		{"context 0, two bytes", ipScope{}, cat([]byte{0x40, 0x00}, ok4), accepted, ok4},
		{"context 0, four bytes", ipScope{}, cat([]byte{0x80, 0, 0, 0}, ok6), accepted, ok6},
		{"context 0, eight bytes", ipScope{}, cat([]byte{0xc0, 0, 0, 0, 0, 0, 0, 0}, ok4), accepted, ok4},
		{"trailing bytes are cut", ipScope{}, cat(ctx0, ok4, []byte{0xde, 0xad}), accepted, ok4},
		{"in scope", ipScope{target: netip.MustParsePrefix("198.18.1.0/24"), proto: protoUDP}, cat(ctx0, ok4), accepted, ok4},
		{"ICMP echo", ipScope{}, cat(ctx0, ipv4Packet(sessAddr4, testDst4, protoICMP, []byte{8, 0, 0, 0})), accepted, ipv4Packet(sessAddr4, testDst4, protoICMP, []byte{8, 0, 0, 0})},

		{"context 1", ipScope{}, cat([]byte{1}, ok4), dropContextID, nil},
		{"context 63", ipScope{}, cat([]byte{0x3f}, ok4), dropContextID, nil},
		{"context 1, two bytes", ipScope{}, cat([]byte{0x40, 0x01}, ok4), dropContextID, nil},
		{"context 2^30, eight bytes", ipScope{}, cat([]byte{0xc0, 0, 0, 0, 0x40, 0, 0, 0}, ok4), dropContextID, nil},

		{"empty datagram", ipScope{}, []byte{}, dropMalformed, nil},
		{"nil datagram", ipScope{}, nil, dropMalformed, nil},
		{"context only", ipScope{}, []byte{0}, dropMalformed, nil},
		{"truncated two-byte context", ipScope{}, []byte{0x40}, dropMalformed, nil},
		{"truncated eight-byte context", ipScope{}, []byte{0xc0, 0, 0, 0}, dropMalformed, nil},
		{"truncated v4 header", ipScope{}, cat(ctx0, ok4[:19]), dropMalformed, nil},
		{"truncated v4 packet", ipScope{}, cat(ctx0, ok4[:len(ok4)-1]), dropMalformed, nil},
		{"truncated v6 packet", ipScope{}, cat(ctx0, ok6[:len(ok6)-1]), dropMalformed, nil},
		{"not IP", ipScope{}, cat(ctx0, []byte("GET / HTTP/1.1\r\n\r\n")), dropMalformed, nil},

		{"spoofed v4 source", ipScope{}, cat(ctx0, udp4(a("100.64.0.3"), testDst4)), dropSourceSpoof, nil},
		{"foreign v4 source", ipScope{}, cat(ctx0, udp4(a("198.18.0.9"), testDst4)), dropSourceSpoof, nil},
		{"spoofed v6 source", ipScope{}, cat(ctx0, udp6(a("fd00:1::3"), testDst6)), dropSourceSpoof, nil},
		{"mapped v4 address in v6 source", ipScope{}, cat(ctx0, udp6(netip.AddrFrom16(sessAddr4.As16()), testDst6)), dropSourceSpoof, nil},
		{"v4 address of the session in an IPv6 header", ipScope{}, cat(ctx0, udp6(a("::100.64.0.2"), testDst6)), dropSourceSpoof, nil},
		{"unspecified source", ipScope{}, cat(ctx0, udp4(netip.IPv4Unspecified(), testDst4)), dropSourceSpoof, nil},

		{"loopback", ipScope{}, cat(ctx0, udp4(sessAddr4, a("127.0.0.1"))), dropDestDenied, nil},
		{"metadata", ipScope{}, cat(ctx0, udp4(sessAddr4, a("169.254.169.254"))), dropDestDenied, nil},
		{"link-local", ipScope{}, cat(ctx0, udp4(sessAddr4, a("169.254.1.1"))), dropDestDenied, nil},
		{"multicast", ipScope{}, cat(ctx0, udp4(sessAddr4, a("224.0.0.251"))), dropDestDenied, nil},
		{"broadcast", ipScope{}, cat(ctx0, udp4(sessAddr4, a("255.255.255.255"))), dropDestDenied, nil},
		{"this network", ipScope{}, cat(ctx0, udp4(sessAddr4, a("0.0.0.0"))), dropDestDenied, nil},
		{"server address", ipScope{}, cat(ctx0, udp4(sessAddr4, a("198.18.0.1"))), dropDestDenied, nil},
		{"other client", ipScope{}, cat(ctx0, udp4(sessAddr4, a("100.64.0.3"))), dropDestDenied, nil},
		{"itself", ipScope{}, cat(ctx0, udp4(sessAddr4, sessAddr4)), dropDestDenied, nil},
		{"v6 loopback", ipScope{}, cat(ctx0, udp6(sessAddr6, a("::1"))), dropDestDenied, nil},
		{"v6 mapped loopback", ipScope{}, cat(ctx0, udp6(sessAddr6, a("::ffff:127.0.0.1"))), dropDestDenied, nil},
		{"v6 mapped metadata", ipScope{}, cat(ctx0, udp6(sessAddr6, a("::ffff:169.254.169.254"))), dropDestDenied, nil},
		{"v6 link-local", ipScope{}, cat(ctx0, udp6(sessAddr6, a("fe80::1"))), dropDestDenied, nil},
		{"v6 multicast", ipScope{}, cat(ctx0, udp6(sessAddr6, a("ff02::1"))), dropDestDenied, nil},
		{"v6 metadata", ipScope{}, cat(ctx0, udp6(sessAddr6, a("fd00:ec2::254"))), dropDestDenied, nil},
		{"v6 other client", ipScope{}, cat(ctx0, udp6(sessAddr6, a("fd00:1::3"))), dropDestDenied, nil},
		{"outside the scope's prefix", ipScope{target: netip.MustParsePrefix("198.18.1.0/24")}, cat(ctx0, udp4(sessAddr4, a("198.18.2.1"))), dropDestDenied, nil},
		{"outside the scope's family", ipScope{target: netip.MustParsePrefix("198.18.0.0/15")}, cat(ctx0, ok6), dropDestDenied, nil},
		{"outside the scope's protocol", ipScope{proto: protoTCP}, cat(ctx0, ok4), dropDestDenied, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ss := newCheckSession(t, tt.scope)
			c := &ss.srv.counters
			var dst [2048]byte
			d := bytes.Clone(tt.d)
			n, ok := ss.checkInbound(d, dst[:])
			if !bytes.Equal(d, tt.d) {
				t.Error("checkInbound modified the datagram")
			}
			var want [numDropReasons]uint64
			if tt.want == accepted {
				if !ok {
					t.Fatalf("checkInbound(%x) rejected, drops %v", tt.d, dropCounts(c))
				}
				if !bytes.Equal(dst[:n], tt.pkt) {
					t.Errorf("checkInbound copied %x, want %x", dst[:n], tt.pkt)
				}
				if got := c.rxPackets.Load(); got != 1 {
					t.Errorf("rxPackets = %d, want 1", got)
				}
				if got := c.rxBytes.Load(); got != uint64(len(tt.pkt)) {
					t.Errorf("rxBytes = %d, want %d", got, len(tt.pkt))
				}
			} else {
				if ok {
					t.Fatalf("checkInbound(%x) accepted %x, want drop %v", tt.d, dst[:n], tt.want)
				}
				want[tt.want] = 1
				if c.rxPackets.Load() != 0 || c.rxBytes.Load() != 0 {
					t.Errorf("rx counters moved for a dropped packet")
				}
			}
			if got := dropCounts(c); got != want {
				t.Errorf("drops = %v, want %v", got, want)
			}
			if got := c.icmpSent.Load(); got != 0 {
				t.Errorf("icmpSent = %d without a gateway", got)
			}
		})
	}
}

// TestDataPathAllocs guards the zero-allocation rule for the per-packet
// steps of the receive and transmit pumps.
func TestDataPathAllocs(t *testing.T) {
	ss := newCheckSession(t, ipScope{})
	r := newIPRouter()
	r.add(ss, ss.addrs()...)
	reply := ipv4Packet(testDst4, sessAddr4, protoUDP, seq(1200))
	d := cat([]byte{0}, ipv4Packet(sessAddr4, testDst4, protoUDP, seq(1200)))
	spoofed := cat([]byte{0}, ipv4Packet(testSrc4, testDst4, protoUDP, seq(64)))
	denied := cat([]byte{0}, ipv6Packet(sessAddr6, netip.MustParseAddr("::1"), protoUDP, seq(64)))
	dst := make([]byte, 2048)
	tests := []struct {
		name string
		f    func()
	}{
		{"parseIPHeader", func() {
			if _, ok := parseIPHeader(reply); !ok {
				t.Fatal("parseIPHeader failed")
			}
		}},
		{"ipRouter.lookup", func() {
			if r.lookup(sessAddr4) != ss {
				t.Fatal("lookup failed")
			}
		}},
		{"transmit step", func() {
			h, _ := parseIPHeader(reply)
			if r.lookup(h.dst) != ss {
				t.Fatal("lookup failed")
			}
		}},
		{"checkInbound accepted", func() {
			if _, ok := ss.checkInbound(d, dst); !ok {
				t.Fatal("checkInbound rejected")
			}
		}},
		{"checkInbound spoofed", func() { ss.checkInbound(spoofed, dst) }},
		{"checkInbound denied", func() { ss.checkInbound(denied, dst) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(1000, tt.f); n != 0 {
				t.Errorf("%s: %v allocs per packet, want 0", tt.name, n)
			}
		})
	}
}

func BenchmarkCheckInbound(b *testing.B) {
	for _, size := range []int{64, 1400} {
		b.Run(strconv.Itoa(size)+"B", func(b *testing.B) {
			ss := newCheckSession(b, ipScope{})
			d := cat([]byte{0}, ipv4Packet(sessAddr4, testDst4, protoUDP, seq(size-ipv4HeaderLen)))
			dst := make([]byte, 2048)
			b.ReportAllocs()
			b.SetBytes(int64(len(d)))
			n := 0
			for b.Loop() {
				if _, ok := ss.checkInbound(d, dst); !ok {
					b.Fatal("checkInbound rejected")
				}
				n++
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "pps")
		})
	}
}

func FuzzCheckInbound(f *testing.F) {
	f.Add(cat([]byte{0}, ipv4Packet(sessAddr4, testDst4, protoUDP, seq(16))), uint8(0))
	f.Add(cat([]byte{0x40, 0}, ipv6Packet(sessAddr6, testDst6, protoTCP, seq(16))), uint8(0))
	f.Add(cat([]byte{0}, ipv4Packet(sessAddr4, netip.MustParseAddr("169.254.169.254"), protoUDP, nil)), uint8(1))
	f.Add(cat([]byte{0}, ipv4Packet(testSrc4, testDst4, protoUDP, nil)), uint8(2))
	f.Add(cat([]byte{0}, ipv6Packet(sessAddr6, netip.MustParseAddr("::ffff:127.0.0.1"), protoUDP, nil)), uint8(3))
	f.Add([]byte{0x80, 0, 0, 1, 0x45}, uint8(0))
	scopes := []ipScope{
		{},
		{target: netip.MustParsePrefix("198.18.0.0/15")},
		{target: netip.MustParsePrefix("2001:db8::/32"), proto: protoTCP},
		{proto: protoUDP},
	}
	f.Fuzz(func(t *testing.T, d []byte, scopeIdx uint8) {
		scope := scopes[int(scopeIdx)%len(scopes)]
		ss := newCheckSession(t, scope)
		c := &ss.srv.counters
		var dst [2048]byte
		n, ok := ss.checkInbound(d, dst[:])
		var outcomes uint64
		for _, v := range dropCounts(c) {
			outcomes += v
		}
		outcomes += c.rxPackets.Load()
		if outcomes != 1 {
			t.Fatalf("checkInbound(%x) moved %d counters, want exactly 1", d, outcomes)
		}
		if !ok {
			return
		}
		h, hok := parseIPHeader(dst[:n])
		if !hok || h.totalLen != n {
			t.Fatalf("checkInbound accepted %x, not one whole IP packet", dst[:n])
		}
		if h.src != sessAddr4 && h.src != sessAddr6 {
			t.Errorf("checkInbound accepted source %v, session has %v and %v", h.src, sessAddr4, sessAddr6)
		}
		if r := ss.srv.cfg.Destinations.Check(h.dst); r != policy.ReasonNone || !scope.allows(h.dst, h.proto) {
			t.Errorf("checkInbound accepted destination %v proto %d (policy %v, scope %+v)", h.dst, h.proto, r, scope)
		}
		if !bytes.Contains(d, dst[:n]) {
			t.Errorf("copied packet is not part of the datagram")
		}
		if c.rxBytes.Load() != uint64(n) {
			t.Errorf("rxBytes = %d, want %d", c.rxBytes.Load(), n)
		}
	})
}

// recordCounter is a slog.Handler that counts the records at Info or above
// and the records by message, and passes all on.
type recordCounter struct {
	slog.Handler
	c *recordCounts
}

type recordCounts struct {
	mu    sync.Mutex
	info  int
	byMsg map[string]int
}

func newRecordCounter(h slog.Handler) recordCounter {
	return recordCounter{h, &recordCounts{byMsg: map[string]int{}}}
}

// counts returns the records at Info or above and those with msg.
func (h recordCounter) counts(msg string) (info, withMsg int) {
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	return h.c.info, h.c.byMsg[msg]
}

func (h recordCounter) Handle(ctx context.Context, r slog.Record) error {
	h.c.mu.Lock()
	if r.Level >= slog.LevelInfo {
		h.c.info++
	}
	h.c.byMsg[r.Message]++
	h.c.mu.Unlock()
	return h.Handler.Handle(ctx, r)
}

func (h recordCounter) WithAttrs(as []slog.Attr) slog.Handler {
	h.Handler = h.Handler.WithAttrs(as)
	return h
}

func (h recordCounter) WithGroup(g string) slog.Handler {
	h.Handler = h.Handler.WithGroup(g)
	return h
}

// TestAddressRequestWalk is issue 13's pool walk over real QUIC: one
// session sends ADDRESS_REQUEST capsules of 4,000 entries walking
// 100.64.0.0/16 (and two IPv6 entries each). Each capsule changes each
// family's address at most once, all capsules together at most the change
// rate allows, the addresses left are free at once (the pool holds one
// address of each family), nothing is logged at Info or above, and another
// identity still gets addresses.
func TestAddressRequestWalk(t *testing.T) {
	logs := newRecordCounter(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	p4, err := policy.NewPool(netip.MustParsePrefix("100.64.0.0/16"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, func(c *ServerConfig) {
		c.Pool4 = p4
		c.Logger = slog.New(logs)
	})
	h := dialH3(t, ts)
	rs := h.session()
	p6 := ts.srv.cfg.Pool6
	held4, held6 := rs.v4, rs.v6
	// serveIP logs "session up" after the capsules rs has read.
	waitCounter(t, `"session up" lines`, func() uint64 { _, n := logs.counts("session up"); return uint64(n) }, 1)
	infoBefore, _ := logs.counts("")

	const capsules, entries = 17, 4000 // 68,000 requests: the whole pool and more
	base4, base6 := p4.Prefix().Addr().As4(), p6.Prefix().Addr().As16()
	parser := http3.NewCapsuleParser(rs.data)
	changes := 0
	start := time.Now()
	for k := range capsules {
		var v []byte
		for j := range entries {
			// .0.3 to .255.254: the session holds .0.2, and asking for
			// the held address is no request to change.
			off := 3 + uint32(k*entries+j)%65532
			a := base4
			a[2], a[3] = byte(off>>8), byte(off)
			v = append(v, addrEntry(uint64(1+j), 4, a[:], 32)...)
		}
		for j := range 2 {
			a := base6
			a[14], a[15] = byte(k), byte(3+j)
			v = append(v, addrEntry(uint64(1+entries+j), 6, a[:], 128)...)
		}
		rs.writeData(capsule(uint64(capsuleAddressRequest), v))

		typ, b := rs.nextCapsule(parser)
		if typ != capsuleAddressAssign {
			t.Fatalf("capsule %d: answer type %#x, want ADDRESS_ASSIGN", k, typ)
		}
		es, err := parseAddresses(b)
		if err != nil {
			t.Fatalf("capsule %d: answer: %v", k, err)
		}
		if len(es) != entries+2 {
			t.Fatalf("capsule %d: answer has %d entries, want %d", k, len(es), entries+2)
		}
		moved4, moved6 := 0, 0
		for i, e := range es {
			if e.reqID != uint64(i+1) {
				t.Fatalf("capsule %d: answer %d has request ID %d, want %d", k, i, e.reqID, i+1)
			}
			held, moved := &held4, &moved4
			if i >= entries {
				held, moved = &held6, &moved6
			}
			if a := e.prefix.Addr(); a != *held {
				*held = a
				*moved++
			}
		}
		if moved4 > 1 || moved6 > 1 {
			t.Fatalf("capsule %d: the address changed %d (IPv4) and %d (IPv6) times, want at most once each", k, moved4, moved6)
		}
		changes += moved4 + moved6
	}
	elapsed := time.Since(start)
	if max := addrChangeBurst + int(float64(addrChangeRate)*elapsed.Seconds()) + 1; changes > max {
		t.Errorf("%d address changes in %v, want at most %d", changes, elapsed, max)
	}
	if changes < addrChangeBurst {
		t.Errorf("%d address changes, want at least the burst %d", changes, addrChangeBurst)
	}
	c := &ts.srv.counters
	if got := c.addrChanges[familyIPv4].Load() + c.addrChanges[familyIPv6].Load(); got != uint64(changes) {
		t.Errorf("address changes counted %d, seen %d", got, changes)
	}
	refused := c.addrRefused[addrRefusedPerCapsule].Load() + c.addrRefused[addrRefusedRate].Load()
	if want := uint64(capsules*(entries+2) - changes); refused != want {
		t.Errorf("refused per_capsule+rate = %d, want %d", refused, want)
	}
	if info, _ := logs.counts(""); info != infoBefore {
		t.Errorf("%d lines at Info or above during the walk, want none", info-infoBefore)
	}
	for _, pool := range []*policy.Pool{p4, p6} {
		if in, l := pool.InUse(), pool.Leased(); in != 1 || l != 1 {
			t.Errorf("pool %s after the walk: InUse() = %d, Leased() = %d, want 1, 1", pool.Prefix(), in, l)
		}
	}
	t.Logf("%d requests in %d capsules: %d changes in %v", capsules*(entries+2), capsules, changes, elapsed)

	// The session carries packets on its new address.
	rs.v4 = held4
	rs.passes()
	// Another identity gets addresses.
	if got := h.request(connectIPFields(ts.addr, testToken+"-bob")).status(); got != "200" {
		t.Fatalf("bob's CONNECT-IP after the walk: status %s, want 200", got)
	}
	waitCounter(t, "addresses in use", func() uint64 { return uint64(p4.InUse()) }, 2)
}
