package tunnel

import (
	"sync/atomic"
)

// rxRing hands packets from one producer goroutine to one consumer
// goroutine without a lock or a channel operation per packet in the common
// case: slots are filled by the producer and published by advancing head;
// the consumer writes everything between tail and head to the TUN in one
// batch and advances tail. The notify channels only wake a side that found
// the ring empty (consumer) or full (producer).
//
// The client uses it between connect-ip-go's ReadPacket, which returns one
// packet per call, and the TUN, whose Write batches (and GRO-coalesces).
type rxRing struct {
	slots [rxRingLen]*packetBuf
	lens  [rxRingLen]int

	head atomic.Uint64 // next slot the producer fills; written by the producer only
	tail atomic.Uint64 // next slot the consumer drains; written by the consumer only

	hasData  chan struct{} // producer → sleeping consumer
	hasSpace chan struct{} // consumer → sleeping producer
	closed   chan struct{}
}

// rxRingLen is a power of two, larger than quic-go's per-stream queue.
const rxRingLen = 128

func newRxRing() *rxRing {
	r := &rxRing{
		hasData:  make(chan struct{}, 1),
		hasSpace: make(chan struct{}, 1),
		closed:   make(chan struct{}),
	}
	for i := range r.slots {
		r.slots[i] = getBuf()
	}
	return r
}

// next returns the slot the producer fills next, waiting for space. It
// returns nil once the ring is closed.
func (r *rxRing) next() *packetBuf {
	h := r.head.Load()
	for h-r.tail.Load() == rxRingLen {
		select {
		case <-r.hasSpace:
		case <-r.closed:
			return nil
		}
	}
	return r.slots[h%rxRingLen]
}

// publish makes the slot returned by next, holding a packet of length n at
// Headroom, visible to the consumer.
func (r *rxRing) publish(n int) {
	h := r.head.Load()
	r.lens[h%rxRingLen] = n
	r.head.Store(h + 1)
	select {
	case r.hasData <- struct{}{}:
	default:
	}
}

// drain waits for packets and puts up to len(bufs) of them into bufs (each
// holding Headroom + the packet). It returns how many, or 0 once the ring is
// closed. The consumer calls release(n) when done with them.
func (r *rxRing) drain(bufs [][]byte) int {
	t := r.tail.Load()
	for r.head.Load() == t {
		select {
		case <-r.hasData:
		case <-r.closed:
			return 0
		}
	}
	h := r.head.Load()
	n := min(int(h-t), len(bufs))
	for i := range n {
		s := (t + uint64(i)) % rxRingLen
		bufs[i] = r.slots[s][:Headroom+r.lens[s]]
	}
	return n
}

// release gives n drained slots back to the producer.
func (r *rxRing) release(n int) {
	r.tail.Add(uint64(n))
	select {
	case r.hasSpace <- struct{}{}:
	default:
	}
}

// close wakes both sides for good. Call it once.
func (r *rxRing) close() { close(r.closed) }

// free returns the buffers to the pool; call after both sides are done.
func (r *rxRing) free() {
	for i, b := range r.slots {
		putBuf(b)
		r.slots[i] = nil
	}
}
