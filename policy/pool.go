package policy

import (
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"time"
)

// ErrPoolExhausted is returned by [Pool.Acquire] when every address of the
// pool is in use or reserved by an unexpired lease.
var ErrPoolExhausted = errors.New("address pool exhausted")

// DefaultLeaseTime is how long a released address stays reserved for its
// identity when [NewPool] is given a zero lease time.
const DefaultLeaseTime = 10 * time.Minute

// DefaultMaxIdlePerIdentity is how many idle leases one identity may hold
// when [PoolConfig.MaxIdlePerIdentity] is zero: as many as its sessions
// (tunnel.DefaultMaxSessionsPerIdentity), so that every session of an
// identity that reconnects gets its address back.
const DefaultMaxIdlePerIdentity = 16

// reclaimBatch bounds how many expired leases one Acquire reclaims.
const reclaimBatch = 8

// PoolConfig configures a [Pool]. Zero values mean the documented
// defaults.
type PoolConfig struct {
	// Prefix holds the addresses handed out. It must be masked and leave
	// room for at least one client: at most /30 for IPv4, /126 for IPv6.
	Prefix netip.Prefix
	// LeaseTime is how long a released address stays reserved for its
	// identity (DefaultLeaseTime).
	LeaseTime time.Duration
	// MaxIdlePerIdentity caps the idle leases of one identity
	// (DefaultMaxIdlePerIdentity): a release that would exceed it drops
	// that identity's oldest idle lease, so no identity reserves more of
	// the pool than its sessions plus this many addresses.
	MaxIdlePerIdentity int
}

// Pool hands out single addresses (/32 or /128) from a prefix, for the inner
// addresses of CONNECT-IP sessions (RFC 9484 §4.7.1).
//
// Leases are per identity: a released address stays reserved for its
// identity for the lease time, and the identity gets it back if it
// reconnects within that time. An identity holds at most
// MaxIdlePerIdentity idle leases; a release beyond that drops its oldest.
// [Pool.Free] releases an address without a lease, for a session that
// moves to another address on request. Two concurrent sessions of one identity get
// different addresses. The prefix's first address (network), the gateway
// (first address + 1, the server's own address) and, for IPv4, the last
// address (broadcast) are never handed out.
//
// Pool never iterates or allocates the whole prefix: it hands out new
// addresses with a cursor and remembers only the leased ones, so a /10 or a
// /64 costs nothing up front. Expired leases are reclaimed lazily from a
// heap ordered by expiry, at most a few per Acquire, each in O(log n).
//
// Pool is safe for concurrent use.
type Pool struct {
	prefix    netip.Prefix
	gateway   netip.Addr
	first     netip.Addr // first address that may be handed out
	broadcast netip.Addr // IPv4 only; zero Addr for IPv6
	usable    uint64     // addresses that may be handed out, saturated at MaxUint64
	leaseTime time.Duration
	maxIdle   int // idle leases per identity

	// mu guards the fields below.
	mu     sync.Mutex
	now    func() time.Time
	cursor netip.Addr            // next candidate for a new address
	leases map[netip.Addr]*lease // every reserved address, in use or idle
	idle   map[Identity][]*lease // idle, unreclaimed leases per identity
	expiry expiryHeap            // idle leases, soonest expiry first
	inUse  int                   // leases with inUse set
}

// lease is one reserved address.
type lease struct {
	addr    netip.Addr
	id      Identity
	inUse   bool
	expires time.Time // when !inUse: reserved until then
	idx     int       // when !inUse: index in idle[id]
	heapIdx int       // when !inUse: index in expiry
}

// expiryHeap is a min-heap of idle leases ordered by expiry time; each
// lease knows its index so that a reconnect can remove it in O(log n).
type expiryHeap []*lease

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires.Before(h[j].expires) }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}
func (h *expiryHeap) Push(x any) {
	l := x.(*lease)
	l.heapIdx = len(*h)
	*h = append(*h, l)
}
func (h *expiryHeap) Pop() any {
	old := *h
	l := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return l
}

// NewPool returns a pool of the addresses in prefix. The prefix must be
// masked (prefix == prefix.Masked()) and leave room for at least one client:
// at most 30 bits for IPv4, at most 126 bits for IPv6. Leases last leaseTime
// after release; zero means [DefaultLeaseTime]. Each identity holds at most
// [DefaultMaxIdlePerIdentity] idle leases.
func NewPool(prefix netip.Prefix, leaseTime time.Duration) (*Pool, error) {
	return NewPoolFromConfig(PoolConfig{Prefix: prefix, LeaseTime: leaseTime})
}

// NewPoolFromConfig returns a pool configured by c; see [PoolConfig].
func NewPoolFromConfig(c PoolConfig) (*Pool, error) {
	prefix, leaseTime := c.Prefix, c.LeaseTime
	if !prefix.IsValid() {
		return nil, fmt.Errorf("pool prefix %v: invalid", prefix)
	}
	if prefix != prefix.Masked() {
		return nil, fmt.Errorf("pool prefix %v: not masked (want %v)", prefix, prefix.Masked())
	}
	a := prefix.Addr()
	if a.Is4In6() {
		return nil, fmt.Errorf("pool prefix %v: IPv4-mapped IPv6, use an IPv4 prefix", prefix)
	}
	if a.Is4() && prefix.Bits() > 30 || a.Is6() && prefix.Bits() > 126 {
		return nil, fmt.Errorf("pool prefix %v: too small, want at most /30 for IPv4 and /126 for IPv6", prefix)
	}
	if leaseTime < 0 {
		return nil, fmt.Errorf("lease time %v: negative", leaseTime)
	}
	if c.MaxIdlePerIdentity < 0 {
		return nil, fmt.Errorf("max idle leases per identity %d: negative", c.MaxIdlePerIdentity)
	}
	if leaseTime == 0 {
		leaseTime = DefaultLeaseTime
	}
	if c.MaxIdlePerIdentity == 0 {
		c.MaxIdlePerIdentity = DefaultMaxIdlePerIdentity
	}
	p := &Pool{
		prefix:    prefix,
		gateway:   a.Next(),
		leaseTime: leaseTime,
		maxIdle:   c.MaxIdlePerIdentity,
		now:       time.Now,
		leases:    make(map[netip.Addr]*lease),
		idle:      make(map[Identity][]*lease),
	}
	p.first = p.gateway.Next()
	p.cursor = p.first
	hostBits := a.BitLen() - prefix.Bits()
	reserved := uint64(2)
	if a.Is4() {
		reserved = 3
		b := a.As4()
		v := binary.BigEndian.Uint32(b[:]) | uint32(1<<hostBits-1)
		p.broadcast = netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, v)))
	}
	if hostBits >= 64 {
		p.usable = math.MaxUint64
	} else {
		p.usable = 1<<hostBits - reserved
	}
	return p, nil
}

// Prefix returns the pool's prefix.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// Gateway returns the server's own address inside the pool: the prefix's
// first address + 1.
func (p *Pool) Gateway() netip.Addr { return p.gateway }

// LeaseTime returns how long a released address stays reserved.
func (p *Pool) LeaseTime() time.Duration { return p.leaseTime }

// MaxIdlePerIdentity returns how many idle leases one identity may hold.
func (p *Pool) MaxIdlePerIdentity() int { return p.maxIdle }

// SetClock replaces the pool's clock, for tests. nil restores time.Now.
func (p *Pool) SetClock(now func() time.Time) {
	if now == nil {
		now = time.Now
	}
	p.mu.Lock()
	p.now = now
	p.mu.Unlock()
}

// InUse returns the number of addresses held by sessions.
func (p *Pool) InUse() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inUse
}

// Leased returns the number of reserved addresses: those in use plus the
// released ones whose lease has not been reclaimed yet.
func (p *Pool) Leased() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.leases)
}

// Acquire returns an address for a new session of id. If id holds an
// unexpired idle lease, it gets that address back (the most recently
// released one); otherwise it gets a free address. It returns
// [ErrPoolExhausted] if there is none.
func (p *Pool) Acquire(id Identity) (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	p.reclaim(now)
	return p.acquire(id, now)
}

// AcquireSpecific is Acquire for an RFC 9484 §4.7.1 ADDRESS_REQUEST: if
// want is in the prefix, not reserved, and free (or leased to id and not in
// use), it returns want; otherwise it falls back to [Pool.Acquire]. An
// unspecified or invalid want means Acquire. An IPv4-mapped IPv6 want is
// treated as its IPv4 address.
func (p *Pool) AcquireSpecific(id Identity, want netip.Addr) (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	p.reclaim(now)
	want = want.Unmap().WithZone("")
	if p.acquireExact(id, want, now) {
		return want, nil
	}
	return p.acquire(id, now)
}

// AcquireExact is AcquireSpecific without the fallback: it reports whether
// id got want, and takes nothing otherwise. A session that asks to move to
// an address it cannot have keeps the one it holds, and no other address
// is taken (and then leased) on its behalf.
func (p *Pool) AcquireExact(id Identity, want netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	p.reclaim(now)
	return p.acquireExact(id, want.Unmap().WithZone(""), now)
}

// acquireExact implements AcquireExact with p.mu held.
func (p *Pool) acquireExact(id Identity, want netip.Addr, now time.Time) bool {
	if !want.IsValid() || want.IsUnspecified() || !p.prefix.Contains(want) || p.reserved(want) {
		return false
	}
	l := p.leases[want]
	switch {
	case l == nil:
		p.newLease(want, id)
		return true
	case l.inUse:
		// Held by a session.
		return false
	case l.id == id || !now.Before(l.expires):
		p.removeIdle(l)
		l.id = id
		p.use(l)
		return true
	}
	return false
}

// Release marks addr as no longer in use. It stays reserved for its
// identity until the lease time has passed, unless the identity already
// holds MaxIdlePerIdentity idle leases: then its oldest idle lease is
// dropped. Releasing an address that is not in use does nothing.
func (p *Pool) Release(addr netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.leases[addr.Unmap().WithZone("")]
	if l == nil || !l.inUse {
		return
	}
	l.inUse = false
	p.inUse--
	l.expires = p.now().Add(p.leaseTime)
	ls := p.idle[l.id]
	if len(ls) >= p.maxIdle {
		// Drop the oldest: the one that expires first. O(maxIdle), as the
		// list is unordered.
		old := ls[0]
		for _, o := range ls[1:] {
			if o.expires.Before(old.expires) {
				old = o
			}
		}
		p.removeIdle(old)
		delete(p.leases, old.addr)
	}
	l.idx = len(p.idle[l.id])
	p.idle[l.id] = append(p.idle[l.id], l)
	heap.Push(&p.expiry, l)
}

// Free releases addr without a lease: it is free at once, for any
// identity. A session that moves to another address on request frees the
// one it leaves, so that walking the pool reserves nothing. Freeing an
// address that is not in use does nothing.
func (p *Pool) Free(addr netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	a := addr.Unmap().WithZone("")
	l := p.leases[a]
	if l == nil || !l.inUse {
		return
	}
	p.inUse--
	delete(p.leases, a)
}

// acquire implements Acquire with p.mu held.
func (p *Pool) acquire(id Identity, now time.Time) (netip.Addr, error) {
	// Reuse id's most recently released lease.
	for ls := p.idle[id]; len(ls) > 0; ls = p.idle[id] {
		l := ls[len(ls)-1]
		p.removeIdle(l)
		if now.Before(l.expires) {
			p.use(l)
			return l.addr, nil
		}
		delete(p.leases, l.addr) // expired
	}
	if uint64(len(p.leases)) >= p.usable {
		// Full: reclaim until one lease is freed or none has expired.
		p.reclaimUntil(now, 1)
		if uint64(len(p.leases)) >= p.usable {
			return netip.Addr{}, ErrPoolExhausted
		}
	}
	// A free address exists, so this loop ends within usable steps; in a
	// sparsely used pool it ends almost at once.
	for {
		a := p.cursor
		p.cursor = a.Next()
		if !p.prefix.Contains(p.cursor) {
			p.cursor = p.first
		}
		if p.reserved(a) || p.leases[a] != nil {
			continue
		}
		p.newLease(a, id)
		return a, nil
	}
}

// reclaim frees up to reclaimBatch expired leases.
func (p *Pool) reclaim(now time.Time) { p.reclaimUntil(now, reclaimBatch) }

// reclaimUntil frees expired leases, soonest first, until it has freed max
// of them or none is left. Each costs O(log n).
func (p *Pool) reclaimUntil(now time.Time, max int) {
	for range max {
		if len(p.expiry) == 0 || now.Before(p.expiry[0].expires) {
			return
		}
		l := heap.Pop(&p.expiry).(*lease)
		p.removeIdleList(l)
		delete(p.leases, l.addr)
	}
}

// reserved reports whether a (inside the prefix) is never handed out.
func (p *Pool) reserved(a netip.Addr) bool {
	return a == p.prefix.Addr() || a == p.gateway || a == p.broadcast
}

// newLease records a new in-use lease of a for id.
func (p *Pool) newLease(a netip.Addr, id Identity) {
	l := &lease{addr: a, id: id}
	p.leases[a] = l
	p.use(l)
}

// use marks an idle or new lease in use.
func (p *Pool) use(l *lease) {
	l.inUse = true
	l.expires = time.Time{}
	p.inUse++
}

// removeIdle makes the idle lease l no longer idle (it is about to be used
// or dropped).
func (p *Pool) removeIdle(l *lease) {
	heap.Remove(&p.expiry, l.heapIdx)
	p.removeIdleList(l)
}

// removeIdleList removes l from p.idle[l.id] in constant time.
func (p *Pool) removeIdleList(l *lease) {
	ls := p.idle[l.id]
	last := len(ls) - 1
	ls[l.idx] = ls[last]
	ls[l.idx].idx = l.idx
	ls[last] = nil
	if last == 0 {
		delete(p.idle, l.id)
	} else {
		p.idle[l.id] = ls[:last]
	}
}
