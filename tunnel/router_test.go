package tunnel

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
)

func TestIPRouter(t *testing.T) {
	a4 := netip.MustParseAddr("100.64.0.2")
	a6 := netip.MustParseAddr("fd00:1::2")
	b4 := netip.MustParseAddr("100.64.0.3")
	s1, s2 := &session{id: 1}, &session{id: 2}

	r := newIPRouter()
	if got := r.lookup(a4); got != nil {
		t.Fatalf("empty router: lookup(%v) = session %d, want nil", a4, got.id)
	}
	r.add(s1, a4, a6)
	r.add(s2, b4)
	check := func(step string, want map[netip.Addr]*session) {
		t.Helper()
		for _, a := range []netip.Addr{a4, a6, b4} {
			if got := r.lookup(a); got != want[a] {
				t.Errorf("%s: lookup(%v) = %p, want %p", step, a, got, want[a])
			}
		}
		if r.len() != len(want) {
			t.Errorf("%s: len() = %d, want %d", step, r.len(), len(want))
		}
	}
	check("after add", map[netip.Addr]*session{a4: s1, a6: s1, b4: s2})

	// A new owner replaces the old one (a lease that moved to a new session).
	r.add(s2, a4)
	check("after takeover", map[netip.Addr]*session{a4: s2, a6: s1, b4: s2})

	// The old owner's removal must not unmap what it no longer owns.
	r.remove(s1, a4, a6)
	check("after removing the old owner", map[netip.Addr]*session{a4: s2, b4: s2})

	// Removing what is not mapped is harmless.
	r.remove(s1, a6, netip.MustParseAddr("198.18.0.1"))
	check("after removing unmapped", map[netip.Addr]*session{a4: s2, b4: s2})

	r.remove(s2, a4, b4)
	check("after removing all", map[netip.Addr]*session{})

	// An IPv4 address and its IPv4-mapped IPv6 form are different keys: the
	// data path looks up the address exactly as parsed from the packet.
	r.add(s1, a4)
	if got := r.lookup(netip.AddrFrom16(a4.As16())); got != nil {
		t.Errorf("lookup(%v) = session %d, want nil", netip.AddrFrom16(a4.As16()), got.id)
	}
}

// TestIPRouterConcurrent looks up addresses while sessions come and go; run
// with -race. A lookup sees either no session or the one that owns the
// address, never another.
func TestIPRouterConcurrent(t *testing.T) {
	r := newIPRouter()
	const n = 64
	sessions := make([]*session, n)
	addrs := make([]netip.Addr, n)
	for i := range sessions {
		sessions[i] = &session{id: uint64(i)}
		addrs[i] = netip.AddrFrom4([4]byte{100, 64, 0, byte(i + 2)})
	}
	stable := &session{id: 1000}
	stableAddr := netip.MustParseAddr("100.64.1.1")
	r.add(stable, stableAddr)

	var (
		wg    sync.WaitGroup
		stop  atomic.Bool
		wrong atomic.Int64
	)
	for range 4 {
		wg.Go(func() {
			for !stop.Load() {
				for i, a := range addrs {
					if s := r.lookup(a); s != nil && s != sessions[i] {
						wrong.Add(1)
					}
				}
				if r.lookup(stableAddr) != stable {
					wrong.Add(1)
				}
			}
		})
	}
	var writers sync.WaitGroup
	for w := range 2 {
		writers.Go(func() {
			for range 100 {
				for i := w; i < n; i += 2 {
					r.add(sessions[i], addrs[i])
				}
				for i := w; i < n; i += 2 {
					r.remove(sessions[i], addrs[i])
				}
			}
		})
	}
	writers.Wait()
	stop.Store(true)
	wg.Wait()
	if w := wrong.Load(); w != 0 {
		t.Errorf("%d lookups returned a wrong session", w)
	}
	if r.len() != 1 || r.lookup(stableAddr) != stable {
		t.Errorf("after all removals: len() = %d, stable lookup = %p", r.len(), r.lookup(stableAddr))
	}
}

func BenchmarkRouterLookup(b *testing.B) {
	r := newIPRouter()
	// A server with a thousand sessions.
	for i := range 1024 {
		s := &session{id: uint64(i)}
		r.add(s, netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}))
	}
	dst := netip.AddrFrom4([4]byte{100, 64, 3, 77})
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if r.lookup(dst) == nil {
			b.Fatal("lookup failed")
		}
		n++
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "pps")
}
