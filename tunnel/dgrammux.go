package tunnel

import (
	"context"
	"slices"
	"sync"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

// datagramSink receives the HTTP datagrams of one request stream.
type datagramSink interface {
	// deliver takes one datagram's payload (context ID first; the slice is
	// the sink's to keep) and reports whether the sink holds packets that
	// wait for flush. It must not block: it runs under the connection's
	// dispatcher lock, and a sink that cannot take d drops and counts it.
	deliver(d []byte) bool
	// flush passes on what deliver held back; called when the
	// connection's datagram queue is empty.
	flush()
}

// dgramMux is the only reader of a connection's QUIC datagrams: it parses
// the quarter stream ID (RFC 9297 §2.1) and hands the payload to the sink
// registered for that stream.
type dgramMux struct {
	conn     *quic.Conn
	counters *counters

	// mu guards the fields below. It is held while a sink's deliver or
	// flush runs, so neither may block (datagramSink).
	mu      sync.Mutex
	sinks   map[quic.StreamID]datagramSink
	pending []datagramSink // sinks holding packets for flush
	early   int            // datagrams held by all earlySinks
}

func newDgramMux(c *quic.Conn, cnt *counters) *dgramMux {
	return &dgramMux{conn: c, counters: cnt, sinks: make(map[quic.StreamID]datagramSink)}
}

// earlyQueueLen is how many datagrams a request stream may receive before
// its handler takes it over (RFC 9298 §5 lets clients send optimistically),
// and earlyConnLen how many all the request streams of a connection may
// hold together. Only a request whose HEADERS have parsed has a queue: a
// datagram for any other stream is dropped (unknown_stream).
const (
	earlyQueueLen = 32
	earlyConnLen  = 64
)

// earlySink holds datagrams of a request whose handler has not registered.
// Those beyond earlyQueueLen, or beyond earlyConnLen on the connection, are
// dropped (queue_full); those still held when the request ends without a
// session or flow are dropped by forget (unknown_stream).
type earlySink struct {
	q [][]byte
	m *dgramMux
}

// deliver is called with m.mu held.
func (e *earlySink) deliver(d []byte) bool {
	if len(e.q) < earlyQueueLen && e.m.early < earlyConnLen {
		e.q = append(e.q, d)
		e.m.early++
	} else {
		e.m.counters.drop(dropQueueFull)
	}
	return false
}
func (e *earlySink) flush() {}

// expect notes a new request stream: its datagrams wait for register.
func (m *dgramMux) expect(id quic.StreamID) {
	m.mu.Lock()
	m.sinks[id] = &earlySink{m: m}
	m.mu.Unlock()
}

// register makes s the receiver of stream id's datagrams, handing it those
// that arrived first.
func (m *dgramMux) register(id quic.StreamID, s datagramSink) {
	m.mu.Lock()
	defer m.mu.Unlock()
	early, _ := m.sinks[id].(*earlySink)
	m.sinks[id] = s
	if early != nil {
		m.early -= len(early.q)
	}
	if early != nil && len(early.q) > 0 {
		for _, d := range early.q {
			s.deliver(d)
		}
		s.flush()
	}
}

// forget stops delivery to stream id. Once it returns the sink is not
// called again.
func (m *dgramMux) forget(id quic.StreamID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.sinks[id]
	if !ok {
		return
	}
	delete(m.sinks, id)
	if e, ok := s.(*earlySink); ok {
		// The request became no session or flow: its early datagrams
		// were for a stream that is none.
		m.counters.drops[dropUnknownStream].Add(uint64(len(e.q)))
		m.early -= len(e.q)
	}
	if i := slices.Index(m.pending, s); i >= 0 {
		m.pending = slices.Delete(m.pending, i, i+1)
	}
}

// run reads datagrams until the connection ends. It waits for the first
// datagram of a burst without the lock, then holds the lock while it
// drains what is queued without blocking, and flushes the sinks when the
// queue is empty: one lock per burst, and batches as large as the burst.
func (m *dgramMux) run() {
	for {
		d, err := m.conn.ReceiveDatagram(context.Background())
		m.mu.Lock()
		ok := true
		for ok && err == nil && d != nil {
			ok = m.handle(d)
			d, err = m.conn.ReceiveDatagram(drainCtx)
		}
		m.flushLocked()
		m.mu.Unlock()
		if !ok || err != nil {
			return
		}
	}
}

// handle parses one datagram's quarter stream ID and passes the payload to
// its sink. A malformed ID closes the connection (RFC 9297 §2.1) and
// returns false. The caller holds m.mu.
func (m *dgramMux) handle(d []byte) bool {
	qsid, n, err := quicvarint.Parse(d)
	if err != nil || qsid > maxQuarterStreamID {
		m.conn.CloseWithError(quic.ApplicationErrorCode(errCodeH3DatagramError), "malformed HTTP datagram")
		return false
	}
	if !m.dispatchLocked(quic.StreamID(qsid*4), d[n:]) {
		m.counters.drop(dropUnknownStream)
	}
	return true
}

// dispatch hands d to the sink of stream id and reports whether there was
// one.
func (m *dgramMux) dispatch(id quic.StreamID, d []byte) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.dispatchLocked(id, d)
}

func (m *dgramMux) dispatchLocked(id quic.StreamID, d []byte) bool {
	s := m.sinks[id]
	if s == nil {
		return false
	}
	if s.deliver(d) && !slices.Contains(m.pending, s) {
		m.pending = append(m.pending, s)
	}
	return true
}

// deliverOne hands one datagram that did not come from the connection's
// queue (a DATAGRAM capsule, RFC 9297 §3.5) to s and flushes s at once.
// Outside m.run's bursts no sink holds packets, so s is not pending.
func (m *dgramMux) deliverOne(s datagramSink, d []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s.deliver(d) {
		s.flush()
	}
}

// flushAll flushes every sink that holds packets.
func (m *dgramMux) flushAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushLocked()
}

func (m *dgramMux) flushLocked() {
	for i, s := range m.pending {
		s.flush()
		m.pending[i] = nil
	}
	m.pending = m.pending[:0]
}
