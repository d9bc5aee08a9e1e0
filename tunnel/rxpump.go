package tunnel

import (
	"context"
	"sync"
)

// The receive side of a server session (client → TUN):
//
//	str.ReceiveDatagram ─► runReceive ─(batch)─► runTUNWriter ─► Device.Write
//
// quic-go queues at most 32 datagrams per HTTP/3 stream and drops the rest
// silently (PERF.md), so the reader does nothing but drain that queue,
// check each packet and copy it into a batch; the TUN write, the slow part
// (GRO coalescing, syscalls), runs in a goroutine of its own. Batches, not
// packets, cross the channel, and the fixed number of batches is the
// backpressure: when all are waiting for the TUN, the reader waits too.

const (
	// recvBatch is the most packets one TUN write carries.
	recvBatch = 64
	// rxBatches is how many batches a session cycles through.
	rxBatches = 4
)

// rxBatch is a batch of checked packets waiting for the TUN. Its buffers
// come from bufPool and go back after the write, so an idle session holds
// none.
type rxBatch struct {
	n    int
	arrs [recvBatch]*packetBuf
	bufs [recvBatch][]byte
}

// runReceive reads the client's datagrams, checks them, and hands them to
// runTUNWriter in batches. It returns when the stream is closed, after the
// writer has written what it was given.
func (ss *session) runReceive() {
	full := make(chan *rxBatch, rxBatches)
	free := make(chan *rxBatch, rxBatches)
	for range rxBatches {
		free <- new(rxBatch)
	}
	var wg sync.WaitGroup
	wg.Go(func() { ss.runTUNWriter(full, free) })
	defer func() {
		close(full)
		wg.Wait()
	}()

	ctx := context.Background()
	cur := <-free
	for {
		rctx := ctx
		if cur.n > 0 {
			rctx = drainCtx
		}
		d, err := ss.str.ReceiveDatagram(rctx)
		if err != nil {
			ss.log.Debug("session stream ended", "err", err)
			full <- cur
			return
		}
		if d == nil {
			// The queue is empty: flush what we have.
			full <- cur
			cur = <-free
			continue
		}
		if cur.arrs[cur.n] == nil {
			cur.arrs[cur.n] = getBuf()
		}
		if l, ok := ss.checkInbound(d, cur.arrs[cur.n][Headroom:]); ok {
			cur.bufs[cur.n] = cur.arrs[cur.n][:Headroom+l]
			cur.n++
			if cur.n == recvBatch {
				full <- cur
				cur = <-free
			}
		}
	}
}

// runTUNWriter writes each batch to the TUN and recycles it. It returns
// when full is closed.
func (ss *session) runTUNWriter(full <-chan *rxBatch, free chan<- *rxBatch) {
	for b := range full {
		if b.n > 0 {
			ss.srv.writeTUN(b.bufs[:b.n])
		}
		for i := range b.arrs {
			if b.arrs[i] == nil {
				break
			}
			putBuf(b.arrs[i])
			b.arrs[i] = nil
			b.bufs[i] = nil
		}
		b.n = 0
		free <- b
	}
}
