package tunnel

import (
	"net/netip"
)

// The transmit side of the server (TUN → clients):
//
//	Device.Read ─► runTUNReader ─► ipRouter ─(batch per session)─► session.runSend ─► SendDatagram
//
// One goroutine reads the TUN (the Device allows one reader) and sorts each
// read batch by session; packets move by handing over their buffers, never
// copied. Each session sends from a goroutine of its own, because quic-go's
// SendDatagram blocks while the connection's 32-datagram queue is full: a
// slow or congested client must not stall the others. A session whose send
// queue is full has the packet dropped and counted (dropQueueFull), as a
// router drops on a full interface queue.

// sendQueueLen is how many batches may wait for one session's sender. At
// low rates a TUN read returns one packet, so a batch often holds one
// packet: the queue must be deep in batches to absorb a burst of single
// packets while SendDatagram waits for quic-go. A queued batch holds only
// its packets' buffers, so an idle session costs little.
const sendQueueLen = 64

// txBatch is a batch of packets for one session's sender.
type txBatch struct {
	n    int
	arrs [txBatchLen]*smallBuf
	lens [txBatchLen]int // packet length at arrs[i][Headroom:]
}

// txBatchLen is the most packets one txBatch carries.
const txBatchLen = 64

// runTUNReader reads batches from the server TUN and routes each packet to
// the session that owns its destination. It exits when the Device is
// closed. It is the only reader of the Device and the only writer of every
// session's pending batch.
func (s *Server) runTUNReader() {
	defer close(s.tunDone)
	dev := s.cfg.Device
	b := newReadBatch(dev.BatchSize())
	defer b.release()
	// A session can be touched again after a full batch was flushed.
	touched := make([]*session, 0, 2*dev.BatchSize())
	for {
		b.reset()
		count, err := dev.Read(b.bufs, b.sizes, Headroom)
		if err != nil {
			if isClosed(err) {
				return
			}
			// A transient read error (e.g. a too-large GSO batch) must not
			// end the server.
			s.counters.drop(dropMalformed)
			continue
		}
		touched = s.routeBatch(b, count, touched)
	}
}

// routeBatch sorts the count packets read into b by session, moving each
// packet's buffer into its session's pending batch, and flushes the
// batches. touched is scratch space, returned for reuse.
func (s *Server) routeBatch(b *readBatch, count int, touched []*session) []*session {
	for i := range count {
		pkt := b.bufs[i][Headroom : Headroom+b.sizes[i]]
		h, ok := parseIPHeader(pkt)
		if !ok {
			s.counters.drop(dropMalformed)
			continue
		}
		ss := s.router.lookup(h.dst)
		if ss == nil {
			s.counters.drop(dropNoSession)
			continue
		}
		p := ss.pending
		if p == nil {
			select {
			case p = <-ss.txFree:
			default:
				s.counters.drop(dropQueueFull)
				continue
			}
			ss.pending = p
			touched = append(touched, ss)
		}
		p.arrs[p.n] = b.take(i)
		p.lens[p.n] = h.totalLen
		p.n++
		if p.n == txBatchLen {
			ss.flushTx()
		}
	}
	for i, ss := range touched {
		ss.flushTx()
		touched[i] = nil
	}
	return touched[:0]
}

// flushTx hands the session's pending batch to its sender, or drops it if
// the sender's queue is full. Called only by runTUNReader.
func (ss *session) flushTx() {
	p := ss.pending
	if p == nil {
		return
	}
	ss.pending = nil
	select {
	case ss.txQueue <- p:
	default:
		ss.srv.counters.drops[dropQueueFull].Add(uint64(p.n))
		p.recycle()
		ss.txFree <- p
	}
}

// dropQueued drops and counts the batches still waiting for runSend when
// the session has ended.
func (ss *session) dropQueued() {
	for {
		select {
		case p := <-ss.txQueue:
			ss.srv.counters.drops[dropNoSession].Add(uint64(p.n))
			p.recycle()
		case m := <-ss.icmpQ:
			putSmallBuf(m.buf)
		default:
			return
		}
	}
}

func (p *txBatch) recycle() {
	for i := range p.n {
		putSmallBuf(p.arrs[i])
		p.arrs[i] = nil
	}
	p.n = 0
}

// runSend sends the session's batches to the client. It returns when
// sendDone is closed (the session ended and left the router), dropping what
// is still queued as no_session. txQueue is never closed, because the TUN
// reader may still hold the session from a lookup just before its removal;
// a batch it queues after runSend returned is left to the garbage
// collector, uncounted: at most one TUN read's worth, once per session.
func (ss *session) runSend() {
	s := ss.srv
	var icmpBuf [Headroom + maxICMPv6Len]byte
	icmpBufs := [][]byte{nil}
	for {
		var p *txBatch
		select {
		case <-ss.sendDone:
			ss.dropQueued()
			return
		default:
		}
		select {
		case p = <-ss.txQueue:
		case m := <-ss.icmpQ:
			if ss.send(m.buf[:Headroom+m.n]) == nil {
				s.counters.icmpSent.Add(1)
			}
			putSmallBuf(m.buf)
			continue
		case <-ss.sendDone:
			ss.dropQueued()
			return
		}
		for i := range p.n {
			buf := p.arrs[i][:Headroom+p.lens[i]]
			err := ss.send(buf)
			if err == nil {
				s.counters.txPackets.Add(1)
				s.counters.txBytes.Add(uint64(p.lens[i]))
				continue
			}
			mtu, ok := tooLargeMTU(err, ss.str.StreamID())
			if !ok {
				s.counters.drop(dropSendFailed)
				continue
			}
			s.counters.drop(dropTooBig)
			// The error goes back into the TUN towards the packet's
			// sender, from the address the packet was for: the
			// gateway address is the server's own, and the kernel
			// drops a packet that arrives with a local source
			// (martian). Conntrack relates the error to the flow and
			// NAT rewrites it with the flow, so the sender sees it
			// from the address it talks to.
			pkt := buf[Headroom:]
			if h, ok := parseIPHeader(pkt); ok {
				from := h.dst
				m := appendICMPError(icmpBuf[:Headroom], pkt, icmpTooBig, mtu, from)
				if len(m) > Headroom {
					icmpBufs[0] = m
					s.writeTUN(icmpBufs)
					s.counters.icmpSent.Add(1)
				}
			}
		}
		p.recycle()
		ss.txFree <- p
	}
}

// writeTUN writes a batch of packets (each at bufs[i][Headroom:]) to the
// server TUN.
func (s *Server) writeTUN(bufs [][]byte) {
	if _, err := s.cfg.Device.Write(bufs, Headroom); err != nil {
		s.counters.drops[dropTUNWrite].Add(tunWriteDrops(err, len(bufs)))
	}
}

// tunWriteDrops is how many of the n packets of a Device.Write that failed
// with err were lost, as far as err tells: wireguard's TUN joins one error
// per failed write (a write may carry several packets coalesced by GRO,
// counted as one); an error that joins nothing (GRO itself failed) lost
// them all.
func tunWriteDrops(err error, n int) uint64 {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return uint64(min(len(j.Unwrap()), n))
	}
	return uint64(n)
}

// gatewayFor returns the server's address inside the pool of pkt's IP
// version: the source of the ICMP errors the server generates.
func (s *Server) gatewayFor(pkt []byte) netip.Addr {
	if len(pkt) == 0 {
		return netip.Addr{}
	}
	if pkt[0]>>4 == 4 {
		if s.cfg.Pool4 != nil {
			return s.cfg.Pool4.Gateway()
		}
		return netip.Addr{}
	}
	if s.cfg.Pool6 != nil {
		return s.cfg.Pool6.Gateway()
	}
	return netip.Addr{}
}
