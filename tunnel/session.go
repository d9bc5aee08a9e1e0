package tunnel

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/masque-vpn/masque/policy"
	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

// session is one CONNECT-IP tunnel on the server.
type session struct {
	srv      *Server
	id       uint64
	identity policy.Identity
	scope    ipScope
	log      *slog.Logger

	str   *h3stream  // control plane: capsules (control.go); its end ends the session
	qconn *quic.Conn // data plane: datagrams, sent and received by us
	mux   *dgramMux  // the connection's datagram reader
	// dgramPrefix is the quarter stream ID and context ID 0 that start
	// every datagram we send (RFC 9297 §2.1, RFC 9484 §6).
	dgramPrefix []byte
	rx          rxPipe

	// The session's addresses. Set before the session is registered;
	// replaced (never modified) when an ADDRESS_REQUEST moves the session
	// to another address, so the data path reads them without a lock.
	addr atomic.Pointer[sessionAddrs]

	// The transmit pipeline (tunread.go). pending is touched only by the
	// server's TUN reader.
	pending  *txBatch
	txQueue  chan *txBatch
	txFree   chan *txBatch
	icmpQ    chan icmpMsg // ICMP errors from the receive path (sendICMP)
	sendDone chan struct{}

	closeOnce sync.Once
}

// startSender creates the transmit queue and starts runSend. The session
// must not be in the router yet.
func (ss *session) startSender(wg *sync.WaitGroup) {
	ss.txQueue = make(chan *txBatch, sendQueueLen)
	ss.txFree = make(chan *txBatch, sendQueueLen+1)
	ss.icmpQ = make(chan icmpMsg, icmpQueueLen)
	ss.sendDone = make(chan struct{})
	for range sendQueueLen + 1 {
		ss.txFree <- new(txBatch)
	}
	wg.Go(ss.runSend)
}

// sessionAddrs are a session's assigned addresses; an invalid one means
// the family is not tunnelled.
type sessionAddrs struct {
	v4, v6 netip.Addr
}

// acquireAddresses leases one address of each family that has a pool.
func (ss *session) acquireAddresses() error {
	cfg := &ss.srv.cfg
	var a sessionAddrs
	if cfg.Pool4 != nil {
		v4, err := cfg.Pool4.Acquire(ss.identity)
		if err != nil {
			return err
		}
		a.v4 = v4
	}
	if cfg.Pool6 != nil {
		v6, err := cfg.Pool6.Acquire(ss.identity)
		if err != nil {
			if a.v4.IsValid() {
				cfg.Pool4.Release(a.v4)
			}
			return err
		}
		a.v6 = v6
	}
	ss.addr.Store(&a)
	return nil
}

func (ss *session) releaseAddresses() {
	cfg := &ss.srv.cfg
	a := ss.addr.Load()
	if a.v4.IsValid() {
		cfg.Pool4.Release(a.v4)
	}
	if a.v6.IsValid() {
		cfg.Pool6.Release(a.v6)
	}
}

func (ss *session) addrs() []netip.Addr {
	a := ss.addr.Load()
	var as []netip.Addr
	if a.v4.IsValid() {
		as = append(as, a.v4)
	}
	if a.v6.IsValid() {
		as = append(as, a.v6)
	}
	return as
}

func (ss *session) prefixes() []netip.Prefix {
	var ps []netip.Prefix
	for _, a := range ss.addrs() {
		ps = append(ps, netip.PrefixFrom(a, a.BitLen()))
	}
	return ps
}

// scopedRoutes narrows the advertised routes to the request's target and
// protocol (RFC 9484 §4.6: the routes must lie within the scope).
func (ss *session) scopedRoutes() []connectip.IPRoute {
	var out []connectip.IPRoute
	for _, r := range ss.srv.routes {
		if ss.scope.target.IsValid() {
			t := ss.scope.target
			if t.Addr().Is4() != r.StartIP.Is4() {
				continue
			}
			first, last := t.Masked().Addr(), lastAddr(t)
			if last.Less(r.StartIP) || r.EndIP.Less(first) {
				continue
			}
			if first.Less(r.StartIP) {
				first = r.StartIP
			}
			if r.EndIP.Less(last) {
				last = r.EndIP
			}
			r.StartIP, r.EndIP = first, last
		}
		r.IPProtocol = ss.scope.proto
		out = append(out, r)
	}
	return sortMergeRoutes(out)
}

// grant decides one requested prefix and returns the address the session
// holds for that family afterwards (invalid: the family is not tunnelled).
func (ss *session) grant(p netip.Prefix) netip.Addr {
	cfg := &ss.srv.cfg
	cur := ss.addr.Load()
	pool, held := cfg.Pool4, cur.v4
	if p.Addr().Is6() {
		pool, held = cfg.Pool6, cur.v6
	}
	if pool == nil {
		return netip.Addr{}
	}
	want := p.Addr()
	if want.IsUnspecified() || want == held || p.Bits() != want.BitLen() || !pool.Prefix().Contains(want) {
		return held
	}
	got, err := pool.AcquireSpecific(ss.identity, want)
	if err != nil {
		return held
	}
	if got != want {
		pool.Release(got)
		return held
	}
	next := *cur
	if want.Is4() {
		next.v4 = want
	} else {
		next.v6 = want
	}
	ss.srv.router.add(ss, want)
	ss.addr.Store(&next)
	ss.srv.router.remove(ss, held)
	pool.Release(held)
	ss.log.Info("address changed on request", "old", held, "new", want)
	return want
}

// nonBlocking is a context whose Done channel is always closed but whose
// Err is nil: quic-go's ReceiveDatagram returns a queued datagram if there is
// one and otherwise (nil, nil) at once, which lets dgramMux drain what is
// queued into one batch without blocking and without allocating.
type nonBlocking struct{ context.Context }

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (nonBlocking) Done() <-chan struct{} { return closedChan }
func (nonBlocking) Err() error            { return nil }

var drainCtx = nonBlocking{context.Background()}

// checkInbound validates one datagram from the client and copies its packet
// into dst. It enforces the security invariants: only context ID 0, a
// well-formed IP packet, a source the session was assigned, a destination
// inside the request's scope and allowed by policy.
func (ss *session) checkInbound(d []byte, dst []byte) (int, bool) {
	c := &ss.srv.counters
	var pkt []byte
	if len(d) > 0 && d[0] == 0 {
		pkt = d[1:]
	} else {
		id, l, err := quicvarint.Parse(d)
		if err != nil {
			c.drop(dropMalformed)
			return 0, false
		}
		if id != 0 {
			c.drop(dropContextID)
			return 0, false
		}
		pkt = d[l:]
	}
	h, ok := parseIPHeader(pkt)
	if !ok {
		c.drop(dropMalformed)
		return 0, false
	}
	pkt = pkt[:h.totalLen]
	if a := ss.addr.Load(); h.src != a.v4 && h.src != a.v6 {
		c.drop(dropSourceSpoof)
		return 0, false
	}
	if !ss.scope.allows(h.dst, h.proto) {
		c.drop(dropDestDenied)
		ss.sendICMP(pkt, icmpAdminProhibited, 0)
		return 0, false
	}
	if r := ss.srv.dests.Load().Check(h.dst); r != policy.ReasonNone {
		c.drop(dropDestDenied)
		// No ICMP error about a datagram to a broadcast or multicast
		// address (RFC 1812 §4.3.2.7, RFC 4443 §2.4 (e)). appendICMPError
		// knows the limited broadcast and multicast; policy also knows the
		// directed broadcasts of the server's prefixes.
		if r != policy.ReasonMulticast {
			ss.sendICMP(pkt, icmpAdminProhibited, 0)
		}
		return 0, false
	}
	c.rxPackets.Add(1)
	c.rxBytes.Add(uint64(len(pkt)))
	return copy(dst, pkt), true
}

// sendICMP answers the client's packet pkt with an ICMP error from the
// server's gateway address. It runs on the receive path, under the
// connection's dispatcher lock, so it only queues the error for runSend
// (SendDatagram blocks while quic-go's send queue is full); with
// icmpQueueLen errors already waiting, this one is dropped (queue_full).
func (ss *session) sendICMP(pkt []byte, kind icmpKind, mtu int) {
	from := ss.srv.gatewayFor(pkt)
	if !from.IsValid() || ss.icmpQ == nil {
		return
	}
	buf := getSmallBuf()
	b := appendICMPError(buf[:Headroom], pkt, kind, mtu, from)
	if len(b) == Headroom {
		putSmallBuf(buf)
		return
	}
	select {
	case ss.icmpQ <- icmpMsg{buf, len(b) - Headroom}:
	default:
		putSmallBuf(buf)
		ss.srv.counters.drop(dropQueueFull)
	}
}

// icmpQueueLen is how many ICMP errors may wait for a session's sender.
const icmpQueueLen = 8

// icmpMsg is an ICMP error waiting for runSend: n bytes at buf[Headroom:].
type icmpMsg struct {
	buf *smallBuf
	n   int
}

// send delivers a packet from the TUN to the client. b holds the packet at
// b[Headroom:]; the bytes before it are overwritten with dgramPrefix, so the
// HTTP datagram is framed in place and handed to QUIC without a copy of
// ours (http3's SendDatagram would allocate and copy once more). quic-go's
// SendDatagram copies, so the caller may reuse b at once.
func (ss *session) send(b []byte) error {
	start := Headroom - len(ss.dgramPrefix)
	copy(b[start:], ss.dgramPrefix)
	return ss.qconn.SendDatagram(b[start:])
}

// errTooLarge reports the largest packet that fits the datagram budget.
func tooLargeMTU(err error, qsid quic.StreamID) (int, bool) {
	e, ok := errors.AsType[*quic.DatagramTooLargeError](err)
	if !ok {
		return 0, false
	}
	// The DATAGRAM payload carries the quarter stream ID and the context ID
	// before the packet (RFC 9297 §2.1, RFC 9484 §6).
	mtu := int(e.MaxDatagramPayloadSize) - quicvarint.Len(uint64(qsid/4)) - 1
	return mtu, true
}
