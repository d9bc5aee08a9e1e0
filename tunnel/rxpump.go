package tunnel

import (
	"sync"
)

// The receive side of a server session (client → TUN):
//
//	conn.ReceiveDatagram ─► dgramMux.run ─► session.deliver ─(batch)─► runTUNWriter ─► Device.Write
//
// dgramMux (h3conn.go), one goroutine per connection, is the only reader of
// quic-go's datagram queue (128 entries, dropped silently when full), so it
// does nothing per packet but check it and copy it into the session's
// current batch; the TUN write, the slow part (GRO coalescing, syscalls),
// runs in a goroutine of the session's own. Batches, not packets, cross the
// channel, and the fixed number of batches bounds what a session holds:
// when all are waiting for the TUN, deliver drops (it runs under the
// dispatcher's lock and must not block).

const (
	// recvBatch is the most packets one TUN write carries.
	recvBatch = 64
	// rxBatches is how many batches a session cycles through.
	rxBatches = 8
)

// rxBatch is a batch of checked packets waiting for the TUN. Its buffers
// come from bufPool and go back after the write, so an idle session holds
// none.
type rxBatch struct {
	n    int
	arrs [recvBatch]*packetBuf
	bufs [recvBatch][]byte
}

// recycle returns b's buffers to the pool and empties it.
func (b *rxBatch) recycle() {
	for i := range b.arrs {
		if b.arrs[i] == nil {
			break
		}
		putBuf(b.arrs[i])
		b.arrs[i] = nil
		b.bufs[i] = nil
	}
	b.n = 0
}

// rxPipe is a session's receive state. cur is touched only by the
// connection's dgramMux (under its lock) and, after the session left the
// mux, by the session itself.
type rxPipe struct {
	full, free chan *rxBatch
	cur        *rxBatch
	wg         sync.WaitGroup
}

// startReceiver creates the batches and starts runTUNWriter.
func (ss *session) startReceiver() {
	p := &ss.rx
	p.full = make(chan *rxBatch, rxBatches)
	p.free = make(chan *rxBatch, rxBatches)
	for range rxBatches {
		p.free <- new(rxBatch)
	}
	p.wg.Go(func() { ss.runTUNWriter(p.full, p.free) })
}

// stopReceiver hands over the last partial batch and waits for the writer
// to write it. The session must have left the mux.
func (ss *session) stopReceiver() {
	ss.flush()
	close(ss.rx.full)
	ss.rx.wg.Wait()
}

// deliver checks one datagram from the client and copies its packet into
// the current batch (datagramSink). It never blocks: when every batch is
// waiting for the TUN, the packet is dropped and counted (queue_full), as a
// router drops on a full interface queue, so a session whose TUN writes
// lag cannot stall the connection's other sessions and flows, or its
// accept of new requests, behind the dispatcher's lock.
func (ss *session) deliver(d []byte) bool {
	p := &ss.rx
	cur := p.cur
	if cur == nil {
		select {
		case cur = <-p.free:
		default:
			ss.srv.counters.drop(dropQueueFull)
			return false
		}
		p.cur = cur
	}
	if cur.arrs[cur.n] == nil {
		cur.arrs[cur.n] = getBuf()
	}
	if l, ok := ss.checkInbound(d, cur.arrs[cur.n][Headroom:]); ok {
		cur.bufs[cur.n] = cur.arrs[cur.n][:Headroom+l]
		cur.n++
		if cur.n == recvBatch {
			p.full <- cur
			p.cur = nil
			return false
		}
	}
	return cur.n > 0
}

// flush passes the current batch to the writer (datagramSink).
func (ss *session) flush() {
	p := &ss.rx
	if p.cur != nil && p.cur.n > 0 {
		p.full <- p.cur
		p.cur = nil
	}
}

// runTUNWriter writes each batch to the TUN and recycles it. It returns
// when full is closed.
func (ss *session) runTUNWriter(full <-chan *rxBatch, free chan<- *rxBatch) {
	for b := range full {
		if b.n > 0 {
			ss.srv.writeTUN(b.bufs[:b.n])
		}
		b.recycle()
		free <- b
	}
}
