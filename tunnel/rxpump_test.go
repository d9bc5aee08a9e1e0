package tunnel

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// newRxTestSession returns a checking session (newCheckSession) with the
// receive batches of startReceiver but no runTUNWriter: the test takes the
// batches from ss.rx.full itself and recycles them with recycleRxBatch.
func newRxTestSession(t testing.TB) *session {
	t.Helper()
	ss := newCheckSession(t, ipScope{})
	ss.rx.full = make(chan *rxBatch, rxBatches)
	ss.rx.free = make(chan *rxBatch, rxBatches)
	for range rxBatches {
		ss.rx.free <- new(rxBatch)
	}
	return ss
}

// recycleRxBatch does to b what runTUNWriter does after the write: the
// buffers go back to the pool and the batch back to ss.rx.free.
func recycleRxBatch(ss *session, b *rxBatch) {
	b.recycle()
	ss.rx.free <- b
}

// rxPackets returns the packets of b as runTUNWriter would write them, and
// fails the test if a buffer lacks the headroom the TUN write needs.
func rxPackets(t *testing.T, b *rxBatch) [][]byte {
	t.Helper()
	pkts := make([][]byte, b.n)
	for i := range b.n {
		if len(b.bufs[i]) < Headroom {
			t.Fatalf("batch buffer %d has %d bytes, less than the headroom %d", i, len(b.bufs[i]), Headroom)
		}
		if &b.bufs[i][0] != &b.arrs[i][0] {
			t.Fatalf("batch buffer %d does not view its pooled array", i)
		}
		pkts[i] = bytes.Clone(b.bufs[i][Headroom:])
	}
	return pkts
}

// okDatagram is an accepted HTTP datagram payload (context ID 0) whose UDP
// payload starts with i, so that packets can be told apart.
func okDatagram(i, size int) (d, pkt []byte) {
	payload := seq(size)
	payload[0] = byte(i)
	pkt = ipv4Packet(sessAddr4, testDst4, protoUDP, payload)
	return cat([]byte{0}, pkt), pkt
}

func TestSessionDeliverBatchesInOrder(t *testing.T) {
	ss := newRxTestSession(t)
	c := &ss.srv.counters
	spoofed := cat([]byte{0}, ipv4Packet(testSrc4, testDst4, protoUDP, seq(16)))

	// A bad packet on an empty batch: nothing waits for flush.
	if ss.deliver(spoofed) {
		t.Error("deliver(spoofed) on an empty batch = true, want false")
	}
	var want [][]byte
	for i := range 3 {
		d, pkt := okDatagram(i, 32)
		if !ss.deliver(d) {
			t.Errorf("deliver(packet %d) = false, want true", i)
		}
		want = append(want, pkt)
		// A spoofed packet between good ones is dropped; the batch still
		// waits for flush.
		if !ss.deliver(spoofed) {
			t.Errorf("deliver(spoofed) after packet %d = false, want true", i)
		}
	}
	if n := len(ss.rx.full); n != 0 {
		t.Fatalf("%d batches handed over before flush, want 0", n)
	}
	ss.flush()
	if n := len(ss.rx.full); n != 1 {
		t.Fatalf("%d batches handed over by flush, want 1", n)
	}
	b := <-ss.rx.full
	if got := rxPackets(t, b); !slices.EqualFunc(got, want, bytes.Equal) {
		t.Errorf("batch = %x, want %x", got, want)
	}
	if got := c.drops[dropSourceSpoof].Load(); got != 4 {
		t.Errorf("source_spoof drops = %d, want 4", got)
	}
	if got := c.rxPackets.Load(); got != 3 {
		t.Errorf("rxPackets = %d, want 3", got)
	}
	recycleRxBatch(ss, b)

	// flush with nothing held hands over nothing, also after a drop.
	ss.flush()
	ss.deliver(spoofed)
	ss.flush()
	if n := len(ss.rx.full); n != 0 {
		t.Errorf("flush without packets handed over %d batches, want 0", n)
	}

	// recvBatch packets fill a batch: it is handed over without flush,
	// and the packet after it starts a new one.
	want = want[:0]
	for i := range recvBatch {
		d, pkt := okDatagram(i, 64)
		held := ss.deliver(d)
		if last := i == recvBatch-1; held == last {
			t.Fatalf("deliver(packet %d of %d) = %v, want %v", i+1, recvBatch, held, !last)
		}
		want = append(want, pkt)
	}
	if n := len(ss.rx.full); n != 1 {
		t.Fatalf("%d batches handed over after %d packets without flush, want 1", n, recvBatch)
	}
	b = <-ss.rx.full
	if b.n != recvBatch {
		t.Errorf("full batch has %d packets, want %d", b.n, recvBatch)
	}
	if got := rxPackets(t, b); !slices.EqualFunc(got, want, bytes.Equal) {
		t.Errorf("full batch differs from the packets delivered")
	}
	recycleRxBatch(ss, b)
	d, pkt := okDatagram(99, 16)
	if !ss.deliver(d) {
		t.Error("deliver after a full batch = false, want true")
	}
	ss.flush()
	b = <-ss.rx.full
	if got := rxPackets(t, b); len(got) != 1 || !bytes.Equal(got[0], pkt) {
		t.Errorf("batch after a full one = %x, want [%x]", got, pkt)
	}
	recycleRxBatch(ss, b)
}

// TestSessionDeliverDropsWithoutFreeBatch: when every batch waits for the
// TUN, deliver does not block (it runs under the connection's dispatcher
// lock): the packet is dropped and counted as queue_full, and delivery
// resumes once the writer returns a batch.
func TestSessionDeliverDropsWithoutFreeBatch(t *testing.T) {
	ss := newRxTestSession(t)
	d, _ := okDatagram(0, 16)
	for range rxBatches {
		ss.deliver(d)
		ss.flush()
	}
	if n := len(ss.rx.full); n != rxBatches {
		t.Fatalf("%d batches handed over, want %d", n, rxBatches)
	}
	before := ss.srv.counters.drops[dropQueueFull].Load()
	done := make(chan bool)
	go func() { done <- ss.deliver(d) }()
	select {
	case held := <-done:
		if held {
			t.Error("deliver with no free batch = true, want false")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("deliver blocked with no free batch")
	}
	if got := ss.srv.counters.drops[dropQueueFull].Load(); got != before+1 {
		t.Errorf("queue_full drops = %d, want %d", got, before+1)
	}
	recycleRxBatch(ss, <-ss.rx.full)
	if !ss.deliver(d) {
		t.Error("deliver after a batch was freed = false, want true")
	}
	ss.flush()
	for len(ss.rx.full) > 0 {
		recycleRxBatch(ss, <-ss.rx.full)
	}
}

// deliverStep is one steady-state round of the receive pump for count
// packets: dgramMux delivers and flushes, runTUNWriter takes the batch and
// recycles it.
func deliverStep(t testing.TB, ss *session, d []byte, count int) {
	for range count {
		ss.deliver(d)
	}
	ss.flush()
	for len(ss.rx.full) > 0 {
		b := <-ss.rx.full
		if b.n == 0 {
			t.Fatal("empty batch handed over")
		}
		recycleRxBatch(ss, b)
	}
}

func TestSessionDeliverDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items under the race detector")
	}
	d, _ := okDatagram(0, 1200)
	spoofed := cat([]byte{0}, ipv4Packet(testSrc4, testDst4, protoUDP, seq(64)))
	for _, tt := range []struct {
		name  string
		d     []byte
		count int
	}{
		{"one packet", d, 1},
		{"full batch", d, recvBatch},
		{"batch and a half", d, recvBatch + recvBatch/2},
		{"spoofed", spoofed, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ss := newRxTestSession(t)
			deliverStep(t, ss, tt.d, tt.count) // warm the pool
			if n := testing.AllocsPerRun(200, func() { deliverStep(t, ss, tt.d, tt.count) }); n != 0 {
				t.Errorf("deliver step of %d packets allocates %.1f times, want 0", tt.count, n)
			}
		})
	}
}

// BenchmarkSessionDeliver measures the server's datagram → batch step per
// packet, with the batch recycled as runTUNWriter does when it is full.
func BenchmarkSessionDeliver(b *testing.B) {
	for _, size := range []int{64, 1400} {
		b.Run(strconv.Itoa(size)+"B", func(b *testing.B) {
			ss := newRxTestSession(b)
			d := cat([]byte{0}, ipv4Packet(sessAddr4, testDst4, protoUDP, seq(size-ipv4HeaderLen)))
			b.ReportAllocs()
			b.SetBytes(int64(len(d)))
			for b.Loop() {
				if !ss.deliver(d) {
					recycleRxBatch(ss, <-ss.rx.full)
				}
			}
			b.StopTimer()
			ss.flush()
			for len(ss.rx.full) > 0 {
				recycleRxBatch(ss, <-ss.rx.full)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pps")
		})
	}
}

// recordSink is a datagramSink that records what it gets.
type recordSink struct {
	got     [][]byte
	flushes int
	hold    bool // what deliver reports
}

func (r *recordSink) deliver(d []byte) bool {
	r.got = append(r.got, d)
	return r.hold
}

func (r *recordSink) flush() { r.flushes++ }

var _ datagramSink = (*recordSink)(nil)

func TestDgramMuxEarlyDatagramsAreReplayed(t *testing.T) {
	for _, tt := range []struct {
		name      string
		early     int // datagrams before register
		wantFlush int
	}{
		{"none", 0, 0},
		{"one", 1, 1},
		{"queue full", earlyQueueLen, 1},
		{"beyond the queue", earlyQueueLen + 8, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := &counters{}
			m := newDgramMux(nil, c)
			const id = quic.StreamID(8)
			m.expect(id)
			var sent [][]byte
			for i := range tt.early {
				d := []byte(fmt.Sprintf("early %d", i))
				if !m.dispatch(id, d) {
					t.Fatalf("datagram %d for an expected stream found no sink", i)
				}
				sent = append(sent, d)
			}
			if len(m.pending) != 0 {
				t.Errorf("an early sink is pending flush: %d", len(m.pending))
			}
			if got, want := c.drops[dropQueueFull].Load(), uint64(max(0, tt.early-earlyQueueLen)); got != want {
				t.Errorf("queue_full drops = %d, want %d", got, want)
			}
			r := &recordSink{}
			m.register(id, r)
			want := sent[:min(len(sent), earlyQueueLen)]
			if !slices.EqualFunc(r.got, want, bytes.Equal) {
				t.Errorf("register replayed %q, want %q", r.got, want)
			}
			if r.flushes != tt.wantFlush {
				t.Errorf("register flushed %d times, want %d", r.flushes, tt.wantFlush)
			}
			r.got = nil
			m.dispatch(id, []byte("late"))
			if len(r.got) != 1 || string(r.got[0]) != "late" {
				t.Errorf("after register the sink got %q, want [late]", r.got)
			}
			m.forget(id)
			if got := c.drops[dropUnknownStream].Load(); got != 0 {
				t.Errorf("unknown_stream drops = %d after a served request, want 0", got)
			}
		})
	}
}

// A request that ends without a session or flow drops the datagrams that
// waited for it, and counts them.
func TestDgramMuxForgetCountsEarlyDatagrams(t *testing.T) {
	c := &counters{}
	m := newDgramMux(nil, c)
	m.expect(8)
	for i := range earlyQueueLen + 3 {
		m.dispatch(8, []byte{byte(i)})
	}
	m.forget(8)
	if got := c.drops[dropUnknownStream].Load(); got != earlyQueueLen {
		t.Errorf("unknown_stream drops = %d, want %d", got, earlyQueueLen)
	}
	if got := c.drops[dropQueueFull].Load(); got != 3 {
		t.Errorf("queue_full drops = %d, want 3", got)
	}
	if m.dispatch(8, []byte{0}) {
		t.Error("a forgotten stream still has a sink")
	}
}

// The early datagrams of all a connection's requests together are capped
// at earlyConnLen; what a request hands over or drops frees its share.
func TestDgramMuxEarlyDatagramsPerConnection(t *testing.T) {
	c := &counters{}
	m := newDgramMux(nil, c)
	streams := earlyConnLen/earlyQueueLen + 1
	for i := range streams {
		id := quic.StreamID(4 * i)
		m.expect(id)
		for range earlyQueueLen {
			m.dispatch(id, []byte{byte(i)})
		}
	}
	if got, want := c.drops[dropQueueFull].Load(), uint64(streams*earlyQueueLen-earlyConnLen); got != want {
		t.Errorf("queue_full drops = %d, want %d", got, want)
	}
	if m.early != earlyConnLen {
		t.Errorf("early datagrams held = %d, want %d", m.early, earlyConnLen)
	}
	r := &recordSink{}
	m.register(0, r)
	if len(r.got) != earlyQueueLen {
		t.Errorf("register handed over %d datagrams, want %d", len(r.got), earlyQueueLen)
	}
	m.forget(4)
	if m.early != earlyConnLen-2*earlyQueueLen {
		t.Errorf("early datagrams held after a register and a forget = %d, want %d", m.early, earlyConnLen-2*earlyQueueLen)
	}
	m.dispatch(quic.StreamID(4*(streams-1)), []byte{1})
	if m.early != earlyConnLen-2*earlyQueueLen+1 {
		t.Errorf("a freed share was not taken: %d held", m.early)
	}
}

func TestDgramMuxRegisterForget(t *testing.T) {
	m := newDgramMux(nil, &counters{})
	a, b := &recordSink{hold: true}, &recordSink{hold: true}

	// register without expect (the stream's datagrams found no early sink).
	m.register(0, a)
	if a.flushes != 0 || len(a.got) != 0 {
		t.Errorf("register without early datagrams: got %q, %d flushes; want nothing", a.got, a.flushes)
	}
	m.expect(4)
	m.register(4, b)
	if b.flushes != 0 {
		t.Errorf("register of an empty early queue flushed %d times, want 0", b.flushes)
	}
	for _, id := range []quic.StreamID{0, 4, 0, 4} {
		if !m.dispatch(id, []byte{byte(id)}) {
			t.Fatalf("stream %d has no sink", id)
		}
	}
	if len(m.pending) != 2 || !slices.Contains(m.pending, datagramSink(a)) || !slices.Contains(m.pending, datagramSink(b)) {
		t.Fatalf("pending = %v, want both sinks once", m.pending)
	}
	if len(a.got) != 2 || len(b.got) != 2 {
		t.Errorf("sinks got %d and %d datagrams, want 2 each", len(a.got), len(b.got))
	}

	// forget takes the sink out of the map and the flush list: it is not
	// called again.
	m.forget(0)
	m.forget(0)  // twice: no-op
	m.forget(12) // never known: no-op
	if m.dispatch(0, []byte{0}) {
		t.Error("a forgotten stream still has a sink")
	}
	if slices.Contains(m.pending, datagramSink(a)) || !slices.Contains(m.pending, datagramSink(b)) || len(m.pending) != 1 {
		t.Errorf("pending after forget = %v, want only the other sink", m.pending)
	}
	m.flushAll()
	if a.flushes != 0 || b.flushes != 1 {
		t.Errorf("flushAll flushed the forgotten sink %d and the other %d times, want 0 and 1", a.flushes, b.flushes)
	}
	if len(m.pending) != 0 {
		t.Errorf("pending after flushAll = %v, want none", m.pending)
	}
	m.flushAll()
	if b.flushes != 1 {
		t.Errorf("flushAll with nothing pending flushed again")
	}

	// A sink that reports nothing held is never pending.
	c := &recordSink{}
	m.register(16, c)
	m.dispatch(16, []byte{1})
	if slices.Contains(m.pending, datagramSink(c)) {
		t.Error("a sink that holds nothing is pending flush")
	}
	m.forget(4)
	m.forget(16)
	if len(m.sinks) != 0 {
		t.Errorf("sinks after forgetting all = %v, want none", m.sinks)
	}
}
