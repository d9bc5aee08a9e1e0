package quicio

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// Path MTU.
//
// quic-go starts a connection at Config.InitialPacketSize and afterwards
// only ever grows the packet size (DPLPMTUD probes upward). A path whose MTU
// shrinks later silently eats every full-size packet, while small ones (ACKs,
// keep-alives) still pass, so the connection never even times out: the
// tunnel stalls for large inner packets. quic-go resets its size only when
// the path itself changes. So both ends:
//
//   - start at the size the kernel says the path carries (the route's MTU,
//     which includes a path MTU learned from ICMP), at most
//     DefaultInitialPacketSize and at least MinPacketSize;
//   - watch each connection (watchPath): when the kernel's path MTU drops
//     below the packet size in use, or most packets are lost while the peer
//     still answers (large packets black-holed without ICMP), they close it
//     with CodePathMTU;
//   - remember such a peer for smallPathTTL and start the next connection
//     with it at MinPacketSize, from where DPLPMTUD finds the path's new
//     size. The client reconnects at once.

// MinPacketSize is the smallest QUIC packet (UDP payload) every path must
// carry (RFC 9000 §14).
const MinPacketSize = 1200

// DatagramOverhead is what a QUIC packet adds to the largest DATAGRAM payload
// quic-go accepts: a packet of N bytes carries datagrams of up to N-37 bytes
// (see ConnIDLen).
const DatagramOverhead = 37

// CodePathMTU is the application error code a connection is closed with
// when its path can no longer carry the packet size in use. H3 leaves codes
// outside its registry to the application; this one spells "MQ" + 1.
const CodePathMTU quic.ApplicationErrorCode = 0x4d5101

// smallPathTTL is how long a peer whose path shrank starts at MinPacketSize.
// At most maxSmallPaths peers are remembered: handshakes that time out are
// what a spoofed flood produces, and it must not grow the map without bound.
const (
	smallPathTTL  = 10 * time.Minute
	maxSmallPaths = 4096
)

// initialPacketSize is the packet size to start a connection to or from a
// peer with: what the kernel's route carries (payload, 0: unknown), capped
// at DefaultInitialPacketSize, MinPacketSize if the peer's path shrank
// recently.
func initialPacketSize(payload int, small bool) uint16 {
	size := DefaultInitialPacketSize
	if payload > 0 {
		size = min(size, payload)
	}
	if small {
		size = MinPacketSize
	}
	return uint16(max(size, MinPacketSize))
}

// pathMemory remembers peers whose path shrank. It is safe for concurrent
// use.
type pathMemory struct {
	mu    sync.Mutex
	small map[netip.Addr]time.Time // peer → until
	now   func() time.Time
}

func newPathMemory() *pathMemory {
	return &pathMemory{small: make(map[netip.Addr]time.Time), now: time.Now}
}

// remember marks addr's path as small for smallPathTTL.
func (m *pathMemory) remember(addr netip.Addr) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if len(m.small) >= maxSmallPaths {
		for a, until := range m.small {
			if now.After(until) {
				delete(m.small, a)
			}
		}
		if len(m.small) >= maxSmallPaths {
			return
		}
	}
	m.small[addr.Unmap()] = now.Add(smallPathTTL)
}

// isSmall reports whether addr's path shrank within smallPathTTL.
func (m *pathMemory) isSmall(addr netip.Addr) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	until, ok := m.small[addr.Unmap()]
	return ok && m.now().Before(until)
}

// clientPaths is what this process's clients remember (one per process is
// the point: the next Dial must know what the last connection learnt).
var clientPaths = newPathMemory()

// errPathShrank is the cause watchPath reports.
type errPathShrank struct{ reason string }

func (e *errPathShrank) Error() string { return "path MTU shrank: " + e.reason }

// closedForPathMTU reports whether c was closed, by either end, because its
// path MTU shrank.
func closedForPathMTU(c *quic.Conn) bool {
	ae, ok := errors.AsType[*quic.ApplicationError](context.Cause(c.Context()))
	return ok && ae.ErrorCode == CodePathMTU
}

// handshakeTimedOut reports whether err ends a handshake that got no answer.
func handshakeTimedOut(err error) bool {
	_, idle := errors.AsType[*quic.IdleTimeoutError](err)
	_, hs := errors.AsType[*quic.HandshakeTimeoutError](err)
	return idle || hs || errors.Is(err, context.DeadlineExceeded)
}

// probeBuf is larger than any QUIC datagram: offering it to SendDatagram
// only asks quic-go for the current limit; nothing is sent or copied.
var probeBuf [1 << 16]byte

// MaxDatagramPayload returns the largest DATAGRAM payload c sends now (it
// grows with path MTU discovery), 0 if c sends none.
func MaxDatagramPayload(c *quic.Conn) int {
	if e, ok := errors.AsType[*quic.DatagramTooLargeError](c.SendDatagram(probeBuf[:])); ok {
		return int(e.MaxDatagramPayloadSize)
	}
	return 0
}

// packetSize returns the QUIC packet size c uses now.
func packetSize(c *quic.Conn) int {
	if n := MaxDatagramPayload(c); n > 0 {
		return n + DatagramOverhead
	}
	return 0
}

// Loss watch. When a path starts to drop large packets, the next second
// loses a burst of them (every full-size packet in flight) while the peer
// still answers the small ones; then the flows inside back off and little
// is sent. So the sign is one second with at least lossMinPackets lost, at
// least lossRatio of what was sent in it, and packets received. A congested path loses far less (QUIC's congestion controller
// backs off). A dead path that comes back also has its losses declared in
// one burst, but before it there were seconds in which we sent and heard
// nothing: no second in the lossQuiet before the burst may be one.
const (
	lossMinPackets = 8
	lossRatio      = 0.3
	lossQuiet      = 5 // seconds
)

// pathWatch holds the state of one connection's watch.
type pathWatch struct {
	c    *quic.Conn
	pmtu func() int // the kernel's path MTU as a UDP payload, 0: unknown
	prev quic.ConnectionStats
	hist [lossQuiet + 1]struct{ sent, lost, rcvd uint64 } // per second, hist[n%len] is the latest
	n    int
}

// check runs once a second and returns why the path no longer carries the
// connection's packets, or nil.
func (w *pathWatch) check() error {
	size := packetSize(w.c)
	if p := w.pmtu(); p > 0 && size > p {
		return &errPathShrank{fmt.Sprintf("the route to the peer carries %d-byte packets, %d in use", p, size)}
	}
	st := w.c.ConnectionStats()
	w.record(st.PacketsSent-w.prev.PacketsSent, st.PacketsLost-w.prev.PacketsLost, st.PacketsReceived-w.prev.PacketsReceived)
	w.prev = st
	return w.lossVerdict()
}

// record adds one second's packet counts.
func (w *pathWatch) record(sent, lost, rcvd uint64) {
	w.hist[w.n%len(w.hist)] = struct{ sent, lost, rcvd uint64 }{sent, lost, rcvd}
	w.n++
}

// lossVerdict applies the loss watch to the seconds recorded.
func (w *pathWatch) lossVerdict() error {
	cur := w.hist[(w.n-1+len(w.hist))%len(w.hist)]
	if cur.lost < lossMinPackets || cur.rcvd == 0 || w.n < 2 {
		return nil
	}
	if float64(cur.lost) < lossRatio*float64(cur.sent) {
		return nil
	}
	for i := 2; i <= min(w.n, len(w.hist)); i++ {
		if h := w.hist[(w.n-i)%len(w.hist)]; h.sent > 0 && h.rcvd == 0 {
			return nil // the path was dead, not narrow
		}
	}
	return &errPathShrank{fmt.Sprintf("%d packets lost in a second in which %d were sent and the peer still answered", cur.lost, cur.sent)}
}

// watchPath checks c's path every second until c ends. When the path no
// longer carries c's packets it remembers the peer in mem, closes c with
// CodePathMTU and returns the reason. It also remembers a peer that closed
// c for that reason.
func watchPath(c *quic.Conn, pmtu func() int, mem *pathMemory) error {
	peer := addrOf(c.RemoteAddr())
	w := &pathWatch{c: c, pmtu: pmtu, prev: c.ConnectionStats()}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-c.Context().Done():
			if closedForPathMTU(c) {
				mem.remember(peer)
			}
			return nil
		case <-t.C:
		}
		if err := w.check(); err != nil {
			mem.remember(peer)
			c.CloseWithError(CodePathMTU, err.Error())
			return err
		}
	}
}
