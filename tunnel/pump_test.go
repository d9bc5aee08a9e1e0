package tunnel

import (
	"net/netip"
	"testing"
)

// Allocation guards for the pump steps that are not covered elsewhere:
// routing a TUN read batch to sessions (server, TUN → clients) and the
// client's receive ring. sync.Pool drops items at random under the race
// detector, so these run without it.

func newRouteTestServer(t testing.TB) (*Server, *session, netip.Addr) {
	s := &Server{router: newIPRouter()}
	a := netip.MustParseAddr("100.64.0.2")
	ss := &session{srv: s}
	ss.addr.Store(&sessionAddrs{v4: a})
	ss.txQueue = make(chan *txBatch, sendQueueLen)
	ss.txFree = make(chan *txBatch, sendQueueLen+1)
	for range sendQueueLen + 1 {
		ss.txFree <- new(txBatch)
	}
	s.router.add(ss, a)
	return s, ss, a
}

// routeStep fills b with count copies of pkt, routes them and plays the
// session's sender: it takes every queued batch and recycles it.
func routeStep(s *Server, ss *session, b *readBatch, pkt []byte, count int, touched []*session) []*session {
	b.reset()
	for i := range count {
		b.sizes[i] = copy(b.bufs[i][Headroom:], pkt)
	}
	touched = s.routeBatch(b, count, touched)
	for {
		select {
		case p := <-ss.txQueue:
			p.recycle()
			ss.txFree <- p
		default:
			return touched
		}
	}
}

func TestRouteBatchDeliversAndDoesNotAllocate(t *testing.T) {
	s, ss, a := newRouteTestServer(t)
	pkt := udp4(netip.MustParseAddr("198.18.2.2"), a, 53, 1000, make([]byte, 1200))
	other := udp4(netip.MustParseAddr("198.18.2.2"), netip.MustParseAddr("100.64.0.9"), 53, 1000, nil)
	b := newReadBatch(128)
	defer b.release()
	touched := make([]*session, 0, 256)

	// 128 packets: two full batches of txBatchLen, plus one for nobody.
	b.reset()
	for i := range 128 {
		p := pkt
		if i == 127 {
			p = other
		}
		b.sizes[i] = copy(b.bufs[i][Headroom:], p)
	}
	touched = s.routeBatch(b, 128, touched)
	var got int
	for len(ss.txQueue) > 0 {
		p := <-ss.txQueue
		for i := range p.n {
			if string(p.arrs[i][Headroom:Headroom+p.lens[i]]) != string(pkt) {
				t.Fatalf("packet %d of a batch differs from what was read", i)
			}
		}
		got += p.n
		p.recycle()
		ss.txFree <- p
	}
	if got != 127 {
		t.Errorf("queued %d packets for the session, want 127", got)
	}
	if n := s.counters.drops[dropNoSession].Load(); n != 1 {
		t.Errorf("no_session drops = %d, want 1", n)
	}

	if raceEnabled {
		t.Skip("sync.Pool drops items under the race detector")
	}
	touched = routeStep(s, ss, b, pkt, 64, touched)
	if n := testing.AllocsPerRun(200, func() { touched = routeStep(s, ss, b, pkt, 64, touched) }); n != 0 {
		t.Errorf("routeBatch allocates %.1f times per batch of 64, want 0", n)
	}
}

func TestRouteBatchDropsWhenSenderIsBehind(t *testing.T) {
	s, ss, a := newRouteTestServer(t)
	pkt := udp4(netip.MustParseAddr("198.18.2.2"), a, 53, 1000, []byte("x"))
	b := newReadBatch(1)
	defer b.release()
	var touched []*session
	// Nobody sends: the queue fills, then one batch waits as pending... and
	// everything after is dropped and counted, never blocking the reader.
	for range sendQueueLen + 5 {
		b.reset()
		b.sizes[0] = copy(b.bufs[0][Headroom:], pkt)
		touched = s.routeBatch(b, 1, touched)
	}
	if got := len(ss.txQueue); got != sendQueueLen {
		t.Errorf("queued batches = %d, want %d", got, sendQueueLen)
	}
	if got := s.counters.drops[dropQueueFull].Load(); got != 5 {
		t.Errorf("queue_full drops = %d, want 5", got)
	}
}

func TestRxRingPassesPacketsInOrderWithoutAllocating(t *testing.T) {
	r := newRxRing()
	defer r.free()
	bufs := make([][]byte, 16)
	step := func(k int) {
		for i := range k {
			buf := r.next()
			buf[Headroom] = byte(i)
			r.publish(1 + i)
		}
		n := r.drain(bufs)
		if n != k {
			t.Fatalf("drain = %d, want %d", n, k)
		}
		for i := range n {
			if len(bufs[i]) != Headroom+1+i || bufs[i][Headroom] != byte(i) {
				t.Fatalf("slot %d: len %d first byte %d", i, len(bufs[i]), bufs[i][Headroom])
			}
		}
		r.release(n)
	}
	for range 3 * rxRingLen / 16 { // wrap around several times
		step(16)
	}
	if n := testing.AllocsPerRun(200, func() { step(16) }); n != 0 {
		t.Errorf("ring step allocates %.1f times, want 0", n)
	}
	r.close()
	if r.drain(bufs) != 0 {
		t.Error("drain on a closed empty ring returned packets")
	}
}

// BenchmarkRouteBatch measures the server's TUN → session step per packet.
func BenchmarkRouteBatch(b *testing.B) {
	s, ss, a := newRouteTestServer(b)
	pkt := udp4(netip.MustParseAddr("198.18.2.2"), a, 53, 1000, make([]byte, 1200))
	rb := newReadBatch(64)
	defer rb.release()
	touched := make([]*session, 0, 128)
	b.ReportAllocs()
	for b.Loop() {
		touched = routeStep(s, ss, rb, pkt, 64, touched)
	}
	b.ReportMetric(float64(b.N*64)/b.Elapsed().Seconds(), "pps")
}

// BenchmarkRxRing measures the client's receive ring per packet.
func BenchmarkRxRing(b *testing.B) {
	r := newRxRing()
	defer r.free()
	bufs := make([][]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		for range 64 {
			r.next()
			r.publish(1200)
		}
		r.release(r.drain(bufs))
	}
	b.ReportMetric(float64(b.N*64)/b.Elapsed().Seconds(), "pps")
}
