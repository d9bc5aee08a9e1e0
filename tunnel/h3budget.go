package tunnel

import (
	"container/list"
	"errors"
	"net"
	"net/netip"
	"sync"

	"github.com/masque-vpn/masque/quicio"
	"github.com/quic-go/quic-go"
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
// multiply), sourceHeaderBudget (1 MiB) of header bytes in all, and at most
// maxUnauthConnsPerSource (16) connections that have not yet carried an
// authenticated request; quicio's per-source limit (64) bounds the rest. Of
// all sources together, at most maxUnauthConns (1,024) unauthenticated
// connections: a new one ends the oldest. A stream that would go over a
// byte budget is reset with H3_EXCESSIVE_LOAD and counted
// (masque_tunnel_unrouted_requests_total{reason="memory_conn"|
// "memory_source"}); a connection over an unauthenticated limit is closed
// with H3_EXCESSIVE_LOAD, the new one for its source's, the oldest for
// the global one, and counted
// (masque_tunnel_unauthenticated_connections_closed_total{reason}).
const (
	connHeaderBudget   = 64 << 10
	sourceHeaderBudget = 1 << 20
	// maxUnauthConnsPerSource bounds a source's connections that no
	// authenticated request has used yet. A client's connection is
	// unauthenticated only from its handshake to its first request, so
	// a NAT with many clients behind one address rarely meets it.
	maxUnauthConnsPerSource = 16
	// maxUnauthConns bounds the unauthenticated connections of all
	// sources together: at about 0.9 MB each under the pin attack, 1,024
	// of them are about 1 GB. Beyond it the oldest is ended.
	maxUnauthConns = 1024
	// maxBudgetSources bounds the sources tracked at once: a source has
	// an entry only while one of its connections holds header bytes.
	maxBudgetSources = 1 << 16
)

// Errors of connBudget.reserve.
var (
	errConnBudget   = errors.New("connection header budget spent")
	errSourceBudget = errors.New("source header budget spent")
)

// headerBudget accounts per source the header bytes of unparsed requests
// and the connections not authenticated yet.
type headerBudget struct {
	mu sync.Mutex // guards the fields below
	// maxUnauth bounds the unauthenticated connections of all sources
	// (0: maxUnauthConns).
	maxUnauth int
	used      map[netip.Prefix]int
	unauth    map[netip.Prefix]int
	// pending lists the unauthenticated connections, oldest first.
	pending list.List
}

// sourceKey is the budget unit of a peer address: the address for IPv4,
// its /64 for IPv6, as quicio's per-source connection limit counts.
func sourceKey(a netip.Addr) netip.Prefix { return quicio.SourceKey(a) }

// forConn returns the budget of a new connection from remote, or false if
// its source has maxUnauthConnsPerSource unauthenticated connections
// already. When all sources together hold maxUnauth, the oldest
// unauthenticated connection is ended with its evict function (called
// before forConn returns) to make room, and evicted is true: a client
// authenticates within a round trip or two of its handshake, so the
// oldest is the likeliest to be one that never will.
func (b *headerBudget) forConn(remote net.Addr, evict func()) (c *connBudget, ok, evicted bool) {
	var key netip.Prefix
	if ua, ok := remote.(*net.UDPAddr); ok {
		key = sourceKey(ua.AddrPort().Addr())
	}
	var old *connBudget
	defer func() {
		if old != nil {
			old.evict()
		}
	}()
	b.mu.Lock()
	defer b.mu.Unlock()
	n, known := b.unauth[key]
	if n >= maxUnauthConnsPerSource || (!known && len(b.unauth) >= maxBudgetSources) {
		return nil, false, false
	}
	max := b.maxUnauth
	if max <= 0 {
		max = maxUnauthConns
	}
	if b.pending.Len() >= max {
		old = b.pending.Front().Value.(*connBudget)
		b.unauthDoneLocked(old)
	}
	if b.unauth == nil {
		b.unauth = make(map[netip.Prefix]int)
	}
	b.unauth[key]++
	c = &connBudget{src: b, key: key, evict: evict}
	c.elem = b.pending.PushBack(c)
	return c, true, old != nil
}

// connBudget is one connection's share of its source's budget.
type connBudget struct {
	src   *headerBudget
	key   netip.Prefix
	evict func() // ends the connection to make room for another

	// elem is the connection's place in src.pending while it is
	// unauthenticated; guarded by src.mu.
	elem *list.Element

	mu   sync.Mutex // guards used
	used int
}

// authenticated notes that a request on the connection authenticated: it
// no longer counts as unauthenticated.
func (c *connBudget) authenticated() {
	c.src.mu.Lock()
	defer c.src.mu.Unlock()
	c.src.unauthDoneLocked(c)
}

// unauthDoneLocked takes c off the unauthenticated connections, if it is
// on them. b.mu is held.
func (b *headerBudget) unauthDoneLocked(c *connBudget) {
	if c.elem == nil {
		return
	}
	b.pending.Remove(c.elem)
	c.elem = nil
	if b.unauth[c.key]--; b.unauth[c.key] <= 0 {
		delete(b.unauth, c.key)
	}
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
	if c.used > 0 {
		c.src.releaseLocked(c.key, c.used)
		c.used = 0
	}
	c.mu.Unlock()
	c.authenticated()
}

func (b *headerBudget) releaseLocked(key netip.Prefix, n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used[key] -= n; b.used[key] <= 0 {
		delete(b.used, key)
	}
}

// unauthLen reports the unauthenticated connections (for tests).
func (b *headerBudget) unauthLen() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pending.Len()
}

// inUse reports the header bytes held for key (for tests).
func (b *headerBudget) inUse(key netip.Prefix) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used[key]
}

// QUICConfig returns the QUIC settings the server's limits imply, for the
// listener that serves it (quicio.Config.QUICConfig):
//
//   - MaxIncomingStreams: the sessions and CONNECT-UDP flows a connection
//     may hold, and a few for requests being refused or ending, so that a
//     peer cannot open quic-go's default 100 streams per connection;
//   - MaxIncomingUniStreams: the peer's control and two QPACK streams and
//     a few reserved (grease) ones;
//   - receive windows sized for capsules, not bulk data (datagrams are not
//     flow-controlled): what quic-go buffers of a peer's unread stream data
//     is bounded by the connection window, 256 KiB until data is consumed.
func (s *Server) QUICConfig() *quic.Config {
	return &quic.Config{
		MaxIncomingStreams:             int64(s.cfg.MaxSessionsPerConn + s.udp.cfg.MaxFlowsPerConn + streamSlack),
		MaxIncomingUniStreams:          3 + streamSlack,
		InitialStreamReceiveWindow:     64 << 10,
		MaxStreamReceiveWindow:         1 << 20,
		InitialConnectionReceiveWindow: 256 << 10,
		MaxConnectionReceiveWindow:     4 << 20,
	}
}

// streamSlack is how many streams of each kind a connection may open
// beyond what its limits need.
const streamSlack = 4
