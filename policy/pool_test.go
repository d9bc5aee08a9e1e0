package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeClock is a settable clock for Pool.SetClock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestPool(t testing.TB, prefix string, lease time.Duration) (*Pool, *fakeClock) {
	t.Helper()
	p, err := NewPool(netip.MustParsePrefix(prefix), lease)
	if err != nil {
		t.Fatalf("NewPool(%s) = %v", prefix, err)
	}
	c := newFakeClock()
	p.SetClock(c.now)
	return p, c
}

func mustAcquire(t testing.TB, p *Pool, id Identity) netip.Addr {
	t.Helper()
	a, err := p.Acquire(id)
	if err != nil {
		t.Fatalf("Acquire(%q) = %v", id, err)
	}
	return a
}

func TestNewPool(t *testing.T) {
	tests := []struct {
		prefix    netip.Prefix
		lease     time.Duration
		gateway   string
		wantLease time.Duration
		wantErr   string
	}{
		{prefix: netip.MustParsePrefix("100.64.0.0/10"), gateway: "100.64.0.1", wantLease: DefaultLeaseTime},
		{prefix: netip.MustParsePrefix("198.18.0.0/30"), lease: time.Minute, gateway: "198.18.0.1", wantLease: time.Minute},
		{prefix: netip.MustParsePrefix("0.0.0.0/0"), gateway: "0.0.0.1", wantLease: DefaultLeaseTime},
		{prefix: netip.MustParsePrefix("fd00::/64"), gateway: "fd00::1", wantLease: DefaultLeaseTime},
		{prefix: netip.MustParsePrefix("2001:db8::/126"), gateway: "2001:db8::1", wantLease: DefaultLeaseTime},
		{prefix: netip.MustParsePrefix("::/0"), gateway: "::1", wantLease: DefaultLeaseTime},
		{prefix: netip.MustParsePrefix("198.18.0.0/31"), wantErr: "too small"},
		{prefix: netip.MustParsePrefix("198.18.0.0/32"), wantErr: "too small"},
		{prefix: netip.MustParsePrefix("2001:db8::/127"), wantErr: "too small"},
		{prefix: netip.MustParsePrefix("198.18.0.1/24"), wantErr: "not masked"},
		{prefix: netip.MustParsePrefix("::ffff:198.18.0.0/120"), wantErr: "IPv4-mapped"},
		{prefix: netip.Prefix{}, wantErr: "invalid"},
		{prefix: netip.MustParsePrefix("198.18.0.0/24"), lease: -time.Second, wantErr: "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.prefix.String(), func(t *testing.T) {
			p, err := NewPool(tt.prefix, tt.lease)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("NewPool(%v, %v) = %v, want error containing %q", tt.prefix, tt.lease, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewPool(%v, %v) = %v", tt.prefix, tt.lease, err)
			}
			if p.Prefix() != tt.prefix || p.Gateway() != netip.MustParseAddr(tt.gateway) || p.LeaseTime() != tt.wantLease {
				t.Errorf("NewPool(%v) = prefix %v gateway %v lease %v, want %v %v %v",
					tt.prefix, p.Prefix(), p.Gateway(), p.LeaseTime(), tt.prefix, tt.gateway, tt.wantLease)
			}
		})
	}
}

func TestNewPoolFromConfig(t *testing.T) {
	pfx := netip.MustParsePrefix("198.18.0.0/24")
	tests := []struct {
		name     string
		cfg      PoolConfig
		wantIdle int
		wantErr  string
	}{
		{name: "default", cfg: PoolConfig{Prefix: pfx}, wantIdle: DefaultMaxIdlePerIdentity},
		{name: "set", cfg: PoolConfig{Prefix: pfx, MaxIdlePerIdentity: 2}, wantIdle: 2},
		{name: "negative", cfg: PoolConfig{Prefix: pfx, MaxIdlePerIdentity: -1}, wantErr: "negative"},
		{name: "bad prefix", cfg: PoolConfig{Prefix: netip.MustParsePrefix("198.18.0.0/31")}, wantErr: "too small"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewPoolFromConfig(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("NewPoolFromConfig(%+v) = %v, want error containing %q", tt.cfg, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewPoolFromConfig(%+v) = %v", tt.cfg, err)
			}
			if got := p.MaxIdlePerIdentity(); got != tt.wantIdle {
				t.Errorf("MaxIdlePerIdentity() = %d, want %d", got, tt.wantIdle)
			}
		})
	}
}

// TestPoolFree checks that a freed address is available to anyone at once
// and leaves no lease behind.
func TestPoolFree(t *testing.T) {
	p, _ := newTestPool(t, "198.18.0.0/30", time.Hour) // one usable address
	a := mustAcquire(t, p, "alice")
	p.Free(a)
	p.Free(a) // double free is a no-op
	if in, l := p.InUse(), p.Leased(); in != 0 || l != 0 {
		t.Fatalf("after Free: InUse() = %d, Leased() = %d, want 0, 0", in, l)
	}
	if got := mustAcquire(t, p, "bob"); got != a {
		t.Fatalf("bob got %v after alice freed it, want %v", got, a)
	}
	// Free does not touch an idle lease.
	p.Release(a)
	p.Free(a)
	if l := p.Leased(); l != 1 {
		t.Fatalf("Free of an idle lease: Leased() = %d, want 1", l)
	}
	if got := mustAcquire(t, p, "bob"); got != a {
		t.Fatalf("bob reconnecting got %v, want his lease %v", got, a)
	}
}

// TestPoolIdleCap checks that an identity holds at most MaxIdlePerIdentity
// idle leases and that the oldest goes first.
func TestPoolIdleCap(t *testing.T) {
	tests := []struct {
		name     string
		max      int
		sessions int
		wantKept int // idle leases of alice after releasing all
	}{
		{name: "under", max: 4, sessions: 3, wantKept: 3},
		{name: "at", max: 4, sessions: 4, wantKept: 4},
		{name: "over", max: 4, sessions: 10, wantKept: 4},
		{name: "one", max: 1, sessions: 5, wantKept: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewPoolFromConfig(PoolConfig{Prefix: netip.MustParsePrefix("198.18.0.0/24"), LeaseTime: time.Hour, MaxIdlePerIdentity: tt.max})
			if err != nil {
				t.Fatal(err)
			}
			clock := newFakeClock()
			p.SetClock(clock.now)
			var as []netip.Addr
			for range tt.sessions {
				as = append(as, mustAcquire(t, p, "alice"))
			}
			b := mustAcquire(t, p, "bob")
			for _, a := range as {
				clock.advance(time.Second)
				p.Release(a)
			}
			if in, l := p.InUse(), p.Leased(); in != 1 || l != 1+tt.wantKept {
				t.Fatalf("InUse(), Leased() = %d, %d, want 1, %d", in, l, 1+tt.wantKept)
			}
			// alice gets back exactly her newest leases.
			kept := map[netip.Addr]bool{}
			for _, a := range as[len(as)-tt.wantKept:] {
				kept[a] = true
			}
			for range tt.wantKept {
				a := mustAcquire(t, p, "alice")
				if !kept[a] {
					t.Errorf("alice got %v, want one of her newest leases %v", a, as[len(as)-tt.wantKept:])
				}
				delete(kept, a)
			}
			if a := mustAcquire(t, p, "carol"); a == b {
				t.Errorf("carol got bob's address %v", a)
			}
		})
	}
}

func TestPoolAcquireExact(t *testing.T) {
	p, _ := newTestPool(t, "198.18.0.0/24", time.Minute)
	x := netip.MustParseAddr("198.18.0.9")
	if !p.AcquireExact("other", x) {
		t.Fatalf("AcquireExact(other, %v) = false on a free address", x)
	}
	for _, want := range []string{"198.18.0.9", "198.18.0.1", "198.18.1.9", "0.0.0.0"} {
		if p.AcquireExact("alice", netip.MustParseAddr(want)) {
			t.Errorf("AcquireExact(alice, %s) = true, want false", want)
		}
	}
	if n := p.InUse(); n != 1 {
		t.Errorf("InUse() = %d, want 1: a refused AcquireExact takes nothing", n)
	}
	p.Release(x)
	if p.AcquireExact("alice", x) {
		t.Errorf("AcquireExact(alice, %v) = true during other's lease", x)
	}
	if !p.AcquireExact("other", x) {
		t.Errorf("AcquireExact(other, %v) = false on its own lease", x)
	}
}

// TestPoolReserved drains small pools and checks exactly the non-reserved
// addresses come out, then exhaustion.
func TestPoolReserved(t *testing.T) {
	tests := []struct {
		prefix string
		want   []string
	}{
		{"198.18.0.0/30", []string{"198.18.0.2"}},
		{"198.18.0.8/29", []string{"198.18.0.10", "198.18.0.11", "198.18.0.12", "198.18.0.13", "198.18.0.14"}},
		{"2001:db8::/126", []string{"2001:db8::2", "2001:db8::3"}},
		{"2001:db8::8/125", []string{"2001:db8::a", "2001:db8::b", "2001:db8::c", "2001:db8::d", "2001:db8::e", "2001:db8::f"}},
		{"255.255.255.252/30", []string{"255.255.255.254"}},
		{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126", []string{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			p, _ := newTestPool(t, tt.prefix, time.Minute)
			var got []string
			for i := range len(tt.want) {
				got = append(got, mustAcquire(t, p, Identity(fmt.Sprint("id", i))).String())
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("addresses (-want +got):\n%s", d)
			}
			if a, err := p.Acquire("late"); !errors.Is(err, ErrPoolExhausted) {
				t.Errorf("Acquire on a full pool = %v, %v, want ErrPoolExhausted", a, err)
			}
			if n := p.InUse(); n != len(tt.want) {
				t.Errorf("InUse() = %d, want %d", n, len(tt.want))
			}
		})
	}
}

func TestPoolLeases(t *testing.T) {
	const lease = time.Minute
	p, clock := newTestPool(t, "198.18.0.0/24", lease)

	a := mustAcquire(t, p, "alice")
	a2 := mustAcquire(t, p, "alice")
	if a == a2 {
		t.Fatalf("two sessions of alice both got %v", a)
	}
	p.Release(a)
	p.Release(a) // double release is a no-op
	if n := p.InUse(); n != 1 {
		t.Fatalf("InUse() = %d, want 1", n)
	}

	b := mustAcquire(t, p, "bob")
	if b == a {
		t.Fatalf("bob got alice's leased address %v", a)
	}
	clock.advance(lease - time.Second)
	if got := mustAcquire(t, p, "alice"); got != a {
		t.Fatalf("alice reconnecting within the lease got %v, want %v", got, a)
	}

	// After expiry the address goes back to the pool and alice gets a new one.
	p.Release(a)
	clock.advance(lease)
	mustAcquire(t, p, "carol") // triggers reclamation
	if got := mustAcquire(t, p, "alice"); got == a {
		t.Fatalf("alice got %v back after her lease expired", got)
	}
	if n := p.Leased(); n != 4 {
		t.Errorf("Leased() = %d, want 4 (a2, b, carol, alice)", n)
	}
}

// TestPoolExhaustion fills small pools, then checks a released address
// stays reserved for its identity until the lease expires.
func TestPoolExhaustion(t *testing.T) {
	const lease = time.Minute
	for _, prefix := range []string{"198.18.0.0/29", "2001:db8::/125"} {
		t.Run(prefix, func(t *testing.T) {
			p, clock := newTestPool(t, prefix, lease)
			var addrs []netip.Addr
			for {
				a, err := p.Acquire("alice")
				if errors.Is(err, ErrPoolExhausted) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				addrs = append(addrs, a)
			}
			if p.InUse() != len(addrs) {
				t.Fatalf("InUse() = %d, want %d", p.InUse(), len(addrs))
			}
			p.Release(addrs[2])
			if a, err := p.Acquire("bob"); !errors.Is(err, ErrPoolExhausted) {
				t.Fatalf("bob Acquire during alice's lease = %v, %v, want ErrPoolExhausted", a, err)
			}
			if a, err := p.AcquireSpecific("bob", addrs[2]); !errors.Is(err, ErrPoolExhausted) {
				t.Fatalf("bob AcquireSpecific(%v) during alice's lease = %v, %v, want ErrPoolExhausted", addrs[2], a, err)
			}
			if got := mustAcquire(t, p, "alice"); got != addrs[2] {
				t.Fatalf("alice Acquire = %v, want her lease %v", got, addrs[2])
			}
			for _, a := range addrs {
				p.Release(a)
			}
			clock.advance(lease)
			for i := range addrs {
				mustAcquire(t, p, Identity(fmt.Sprint("bob", i)))
			}
			if a, err := p.Acquire("bob"); !errors.Is(err, ErrPoolExhausted) {
				t.Fatalf("Acquire = %v, %v, want ErrPoolExhausted", a, err)
			}
		})
	}
}

func TestPoolAcquireSpecific(t *testing.T) {
	const lease = time.Minute
	tests := []struct {
		name  string
		setup func(p *Pool) // runs as "other" and "alice" before the request
		want  string
		wantS string // the address that must be returned; "" means any other than want
	}{
		{name: "free", want: "198.18.0.77", wantS: "198.18.0.77"},
		{name: "mapped", want: "::ffff:198.18.0.77", wantS: "198.18.0.77"},
		{name: "unspecified", want: "0.0.0.0", wantS: "198.18.0.2"},
		{name: "invalid", want: "", wantS: "198.18.0.2"},
		{name: "network", want: "198.18.0.0", wantS: "198.18.0.2"},
		{name: "gateway", want: "198.18.0.1", wantS: "198.18.0.2"},
		{name: "broadcast", want: "198.18.0.255", wantS: "198.18.0.2"},
		{name: "outside", want: "198.18.1.7", wantS: "198.18.0.2"},
		{name: "other family", want: "2001:db8::7", wantS: "198.18.0.2"},
		{
			name:  "in use by other",
			setup: func(p *Pool) { p.AcquireSpecific("other", netip.MustParseAddr("198.18.0.9")) },
			want:  "198.18.0.9", wantS: "198.18.0.2",
		},
		{
			name: "leased to other",
			setup: func(p *Pool) {
				a, _ := p.AcquireSpecific("other", netip.MustParseAddr("198.18.0.9"))
				p.Release(a)
			},
			want: "198.18.0.9", wantS: "198.18.0.2",
		},
		{
			name: "in use by alice",
			setup: func(p *Pool) {
				p.AcquireSpecific("alice", netip.MustParseAddr("198.18.0.9"))
			},
			want: "198.18.0.9", wantS: "198.18.0.2",
		},
		{
			name: "leased to alice",
			setup: func(p *Pool) {
				a, _ := p.AcquireSpecific("alice", netip.MustParseAddr("198.18.0.9"))
				p.Release(a)
			},
			want: "198.18.0.9", wantS: "198.18.0.9",
		},
		{
			name: "fallback prefers own lease",
			setup: func(p *Pool) {
				a, _ := p.AcquireSpecific("alice", netip.MustParseAddr("198.18.0.50"))
				p.Release(a)
			},
			want: "198.18.0.1", wantS: "198.18.0.50",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, _ := newTestPool(t, "198.18.0.0/24", lease)
			if tt.setup != nil {
				tt.setup(p)
			}
			var want netip.Addr
			if tt.want != "" {
				want = netip.MustParseAddr(tt.want)
			}
			got, err := p.AcquireSpecific("alice", want)
			if err != nil || got != netip.MustParseAddr(tt.wantS) {
				t.Errorf("AcquireSpecific(alice, %v) = %v, %v, want %v", want, got, err, tt.wantS)
			}
		})
	}
}

func TestPoolAcquireSpecificExpired(t *testing.T) {
	const lease = time.Minute
	p, clock := newTestPool(t, "2001:db8::/64", lease)
	want := netip.MustParseAddr("2001:db8::1234")
	if got, err := p.AcquireSpecific("other", want); err != nil || got != want {
		t.Fatalf("AcquireSpecific(other, %v) = %v, %v", want, got, err)
	}
	p.Release(want)
	clock.advance(lease)
	if got, err := p.AcquireSpecific("alice", want); err != nil || got != want {
		t.Fatalf("AcquireSpecific(alice, %v) after other's lease expired = %v, %v", want, got, err)
	}
	// other's idle list must no longer hold the address.
	if a := mustAcquire(t, p, "other"); a == want {
		t.Fatalf("other got %v, which alice holds", a)
	}
}

// TestPoolReclaimBounded checks that expired leases are reclaimed lazily,
// a bounded number per Acquire, and that nothing is left behind.
func TestPoolReclaimBounded(t *testing.T) {
	const lease = time.Minute
	const n = 1000
	p, clock := newTestPool(t, "100.64.0.0/10", lease)
	var addrs []netip.Addr
	for i := range n {
		addrs = append(addrs, mustAcquire(t, p, Identity(fmt.Sprint("id", i))))
	}
	for _, a := range addrs {
		p.Release(a)
	}
	clock.advance(lease)
	mustAcquire(t, p, "x")
	if got, want := p.Leased(), n-reclaimBatch+1; got != want {
		t.Fatalf("Leased() after one Acquire = %d, want %d", got, want)
	}
	for range n {
		mustAcquire(t, p, "x")
	}
	if got, want := p.Leased(), n+1; got != want {
		t.Fatalf("Leased() = %d, want %d", got, want)
	}
	p.mu.Lock()
	pending, idle := len(p.expiry), len(p.idle)
	p.mu.Unlock()
	if pending != 0 || idle != 0 {
		t.Errorf("after reclaiming: %d pending expiries, %d idle identities, want 0, 0", pending, idle)
	}
}

// TestPoolHuge checks that huge pools cost nothing up front and hand out
// addresses quickly.
func TestPoolHuge(t *testing.T) {
	for _, prefix := range []string{"100.64.0.0/10", "fd00::/64", "::/0", "0.0.0.0/0"} {
		t.Run(prefix, func(t *testing.T) {
			allocs := testing.AllocsPerRun(10, func() {
				if _, err := NewPool(netip.MustParsePrefix(prefix), 0); err != nil {
					t.Fatal(err)
				}
			})
			if allocs > 10 {
				t.Errorf("NewPool(%s) allocs = %v, want <= 10", prefix, allocs)
			}
			p, _ := newTestPool(t, prefix, time.Minute)
			start := time.Now()
			n := 100_000
			if testing.Short() {
				n = 10_000
			}
			seen := make(map[netip.Addr]bool, n)
			for i := range n {
				a := mustAcquire(t, p, Identity(fmt.Sprint("id", i%100)))
				if seen[a] || !p.Prefix().Contains(a) {
					t.Fatalf("Acquire #%d = %v: duplicate or outside %v", i, a, p.Prefix())
				}
				seen[a] = true
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("%d Acquires took %v", n, d)
			}
		})
	}
}

// TestPoolConcurrent runs many sessions of a few identities at once and
// checks that no address is ever held by two sessions. Run with -race.
func TestPoolConcurrent(t *testing.T) {
	p, clock := newTestPool(t, "198.18.0.0/24", time.Second)
	var (
		mu   sync.Mutex
		held = map[netip.Addr]bool{}
		errs = make(chan error, 16)
		wg   sync.WaitGroup
	)
	for g := range 16 {
		wg.Go(func() {
			id := Identity(fmt.Sprint("id", g%4))
			for i := range 500 {
				var a netip.Addr
				var err error
				if i%3 == 0 {
					a, err = p.AcquireSpecific(id, netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}))
				} else {
					a, err = p.Acquire(id)
				}
				if errors.Is(err, ErrPoolExhausted) {
					clock.advance(time.Second)
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				dup := held[a]
				held[a] = true
				mu.Unlock()
				if dup {
					errs <- fmt.Errorf("%v handed to two sessions", a)
					return
				}
				if i%50 == 0 {
					clock.advance(100 * time.Millisecond)
				}
				mu.Lock()
				delete(held, a)
				mu.Unlock()
				p.Release(a)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := p.InUse(); n != 0 {
		t.Errorf("InUse() = %d after all releases, want 0", n)
	}
}

func BenchmarkPoolAcquireRelease(b *testing.B) {
	for _, prefix := range []string{"100.64.0.0/10", "fd00::/64"} {
		b.Run(prefix, func(b *testing.B) {
			p, clock := newTestPool(b, prefix, time.Minute)
			ids := make([]Identity, 1024)
			for i := range ids {
				ids[i] = Identity(fmt.Sprint("id", i))
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				a, err := p.Acquire(ids[i%len(ids)])
				if err != nil {
					b.Fatal(err)
				}
				p.Release(a)
				i++
				if i%len(ids) == 0 {
					clock.advance(time.Second)
				}
			}
		})
	}
}

// FuzzPool runs a random sequence of operations and checks that addresses
// are always inside the prefix, never reserved, never held by two sessions,
// that a reconnect within the lease gets the old address back, that a freed
// address keeps no lease, that no identity holds more than the cap of idle
// leases (the oldest goes first), and that the pool's counts agree with
// each other and with the model.
func FuzzPool(f *testing.F) {
	f.Add(uint8(0), []byte{0, 1, 2, 0, 1, 2, 3, 3, 3, 4, 5, 6, 7})
	f.Add(uint8(1), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x41, 0xc0, 0, 0x83, 0x83})
	f.Add(uint8(2), []byte{0x80, 0x81, 0x82, 0x40, 0x41, 0xff, 0xc7, 0x10, 0x11})
	f.Add(uint8(3), []byte{0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0xc0, 0xe0, 0x40, 0x21})
	// Cap 1 and 2 on a /28: one identity releasing more than the cap.
	f.Add(uint8(4), []byte{0, 0, 0, 0, 0x80, 0xc1, 0x80, 0xc1, 0x80, 0xc1, 0x80, 0, 0, 0})
	f.Add(uint8(0x14), []byte{0, 0, 0, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0, 0, 0, 0xc5, 0})
	// Free: the address goes to another identity at once.
	f.Add(uint8(0x24), []byte{0, 0, 0xa0, 0xa0, 1, 1, 0x44, 0x48, 0xa1, 0x4c, 0xc1})
	prefixes := []string{"198.18.0.8/29", "2001:db8::/125", "198.18.0.0/30", "2001:db8::/126", "198.18.0.0/28"}
	const lease = 10 * time.Second
	f.Fuzz(func(t *testing.T, which uint8, ops []byte) {
		maxIdle := 1 + int(which>>4)%3
		p, err := NewPoolFromConfig(PoolConfig{
			Prefix:             netip.MustParsePrefix(prefixes[int(which&0xf)%len(prefixes)]),
			LeaseTime:          lease,
			MaxIdlePerIdentity: maxIdle,
		})
		if err != nil {
			t.Fatal(err)
		}
		clock := newFakeClock()
		p.SetClock(clock.now)
		pfx := p.Prefix()
		base := pfx.Addr()
		held := map[netip.Addr]Identity{} // in use
		type rel struct {
			id Identity
			at time.Time
		}
		released := map[netip.Addr]rel{} // released, lease maybe unexpired
		var order []netip.Addr           // held addresses in acquire order
		for _, op := range ops {
			id := Identity(fmt.Sprint("id", op&3))
			var a netip.Addr
			var err error
			switch op >> 6 {
			case 0: // Acquire: must return one of id's unexpired leases if any
				a, err = p.Acquire(id)
				var own []netip.Addr
				for ra, r := range released {
					if r.id == id && clock.now().Before(r.at.Add(lease)) {
						own = append(own, ra)
					}
				}
				if len(own) > 0 && (err != nil || released[a].id != id) {
					t.Fatalf("Acquire(%s) = %v, %v, want one of its leases %v", id, a, err, own)
				}
			case 1: // AcquireSpecific: base + low bits
				want := base
				for range op >> 2 & 7 {
					want = want.Next()
				}
				if op&0x20 != 0 {
					want = netip.Addr{}
				}
				a, err = p.AcquireSpecific(id, want)
				if err == nil && want.IsValid() && held[want] == "" && want != a {
					if r, ok := released[want]; !p.reserved(want) && pfx.Contains(want) && (!ok || r.id == id || !clock.now().Before(r.at.Add(lease))) {
						t.Fatalf("AcquireSpecific(%s, %v) = %v, want %v (free)", id, want, a, want)
					}
				}
			case 2: // Release (or, with 0x20, Free) the op-th held address
				if len(order) > 0 {
					i := int(op&0x1f) % len(order)
					r := order[i]
					order = append(order[:i], order[i+1:]...)
					rid := held[r]
					delete(held, r)
					if op&0x20 != 0 {
						p.Free(r)
						if p.leases[r] != nil {
							t.Fatalf("Free(%v): still leased", r)
						}
					} else {
						before := idleOf(p, rid)
						p.Release(r)
						var gone []netip.Addr
						for _, b := range before {
							if l := p.leases[b]; l == nil || l.id != rid || l.inUse {
								gone = append(gone, b)
							}
						}
						switch {
						case len(gone) > 1:
							t.Fatalf("Release(%v) dropped %d idle leases of %s, want at most 1", r, len(gone), rid)
						case len(gone) == 1 && len(before) < maxIdle:
							t.Fatalf("Release(%v) dropped %v with %d idle leases under the cap %d", r, gone[0], len(before), maxIdle)
						case len(gone) == 0 && len(before) >= maxIdle:
							t.Fatalf("Release(%v) kept %d idle leases of %s, cap %d", r, len(before)+1, rid, maxIdle)
						case len(gone) == 1:
							for _, b := range before {
								if released[b].at.Before(released[gone[0]].at) {
									t.Fatalf("Release(%v) dropped %v, not the oldest %v", r, gone[0], b)
								}
							}
							delete(released, gone[0])
						}
						released[r] = rel{rid, clock.now()}
					}
				}
				checkPool(t, p, held, maxIdle)
				continue
			case 3: // advance the clock
				clock.advance(time.Duration(op&0x3f) * time.Second)
				continue
			}
			if errors.Is(err, ErrPoolExhausted) {
				checkPool(t, p, held, maxIdle)
				continue
			}
			if err != nil {
				t.Fatalf("unexpected error %v", err)
			}
			if !pfx.Contains(a) || p.reserved(a) {
				t.Fatalf("got %v: outside %v or reserved", a, pfx)
			}
			if other, ok := held[a]; ok {
				t.Fatalf("%v handed to %s while %s holds it", a, id, other)
			}
			if r, ok := released[a]; ok && r.id != id && clock.now().Before(r.at.Add(lease)) {
				t.Fatalf("%v handed to %s during %s's lease", a, id, r.id)
			}
			delete(released, a)
			held[a] = id
			order = append(order, a)
			checkPool(t, p, held, maxIdle)
		}
	})
}

// idleOf returns the addresses of id's idle leases.
func idleOf(p *Pool, id Identity) []netip.Addr {
	var as []netip.Addr
	for _, l := range p.idle[id] {
		as = append(as, l.addr)
	}
	return as
}

// checkPool checks the pool's internal consistency against the addresses
// the model holds: every held address leased in use to its holder, the
// counts agreeing, every idle lease in its identity's list and the heap
// once, and no identity over the cap.
func checkPool(t *testing.T, p *Pool, held map[netip.Addr]Identity, maxIdle int) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inUse != len(held) {
		t.Fatalf("inUse = %d, want %d", p.inUse, len(held))
	}
	for a, id := range held {
		if l := p.leases[a]; l == nil || !l.inUse || l.id != id || l.addr != a {
			t.Fatalf("held %v (%s): lease %+v", a, id, l)
		}
	}
	inUse, idle := 0, 0
	for a, l := range p.leases {
		if l.addr != a {
			t.Fatalf("leases[%v].addr = %v", a, l.addr)
		}
		if l.inUse {
			inUse++
			continue
		}
		idle++
		if ls := p.idle[l.id]; l.idx >= len(ls) || ls[l.idx] != l {
			t.Fatalf("idle lease %v of %s not at its index %d", a, l.id, l.idx)
		}
		if l.heapIdx >= len(p.expiry) || p.expiry[l.heapIdx] != l {
			t.Fatalf("idle lease %v not at its heap index %d", a, l.heapIdx)
		}
	}
	n := 0
	for id, ls := range p.idle {
		if len(ls) > maxIdle {
			t.Fatalf("%s holds %d idle leases, cap %d", id, len(ls), maxIdle)
		}
		n += len(ls)
	}
	if inUse != p.inUse || idle != n || idle != len(p.expiry) {
		t.Fatalf("leases: %d in use, %d idle; inUse = %d, idle lists %d, heap %d", inUse, idle, p.inUse, n, len(p.expiry))
	}
}
