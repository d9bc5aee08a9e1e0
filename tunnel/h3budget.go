package tunnel

import (
	"errors"
	"net"
	"net/netip"
	"sync"
)

// What a peer can make the server hold before one of its requests has
// parsed (DESIGN.md "Security invariants": unauthenticated peers get no
// state). Per connection, at most:
//
//   - maxUnparsedRequests (8) request streams being read, each a goroutine
//     with a 512-byte reader;
//   - connHeaderBudget (64 KiB) of header bytes in all, grown as bytes
//     arrive, never from a frame's announced length;
//   - what quic-go buffers of its streams, bounded by the connection's
//     receive window (serverQUICConfig: 256 KiB until data is consumed);
//   - no early datagrams (only a parsed request gets a queue);
//   - all of it for at most the request timeout.
//
// Per source (an IPv4 address or an IPv6 /64, the unit a peer can cheaply
// multiply), sourceHeaderBudget (1 MiB) of header bytes in all, and
// quicio's per-source connection limit. A stream that would go over a
// budget is reset with H3_EXCESSIVE_LOAD and counted
// (masque_tunnel_unrouted_requests_total{reason="memory_conn"|"memory_source"}).
const (
	connHeaderBudget   = 64 << 10
	sourceHeaderBudget = 1 << 20
	// maxBudgetSources bounds the sources tracked at once: a source has
	// an entry only while one of its connections holds header bytes.
	maxBudgetSources = 1 << 16
)

// Errors of connBudget.reserve.
var (
	errConnBudget   = errors.New("connection header budget spent")
	errSourceBudget = errors.New("source header budget spent")
)

// headerBudget accounts the header bytes of unparsed requests per source.
type headerBudget struct {
	mu   sync.Mutex // guards used
	used map[netip.Prefix]int
}

// sourceKey is the budget unit of a peer address: the address for IPv4,
// its /64 for IPv6.
func sourceKey(a netip.Addr) netip.Prefix {
	a = a.Unmap().WithZone("")
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.Prefix(64)
	return p
}

// forConn returns the budget of a new connection from remote.
func (b *headerBudget) forConn(remote net.Addr) *connBudget {
	var key netip.Prefix
	if ua, ok := remote.(*net.UDPAddr); ok {
		key = sourceKey(ua.AddrPort().Addr())
	}
	return &connBudget{src: b, key: key}
}

// connBudget is one connection's share of the header budget.
type connBudget struct {
	src *headerBudget
	key netip.Prefix

	mu   sync.Mutex // guards used
	used int
}

// reserve takes n more bytes for the connection, or reports which budget
// is spent.
func (c *connBudget) reserve(n int) error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.used+n > connHeaderBudget {
		return errConnBudget
	}
	b := c.src
	b.mu.Lock()
	defer b.mu.Unlock()
	u, ok := b.used[c.key]
	if u+n > sourceHeaderBudget || (!ok && len(b.used) >= maxBudgetSources) {
		return errSourceBudget
	}
	if b.used == nil {
		b.used = make(map[netip.Prefix]int)
	}
	b.used[c.key] = u + n
	c.used += n
	return nil
}

// release gives back n bytes that reserve took.
func (c *connBudget) release(n int) {
	if c == nil || n == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.used -= n
	c.src.releaseLocked(c.key, n)
}

// close gives back whatever the connection still holds.
func (c *connBudget) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.used > 0 {
		c.src.releaseLocked(c.key, c.used)
		c.used = 0
	}
}

func (b *headerBudget) releaseLocked(key netip.Prefix, n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used[key] -= n; b.used[key] <= 0 {
		delete(b.used, key)
	}
}

// inUse reports the header bytes held for key (for tests).
func (b *headerBudget) inUse(key netip.Prefix) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used[key]
}
