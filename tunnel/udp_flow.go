package tunnel

// A CONNECT-UDP flow on the server: one request stream, one connected UDP
// socket, three goroutines and the handler's own.
//
//	client ─ HTTP datagram ─► runUp ─► socket.Write ─► target
//	target ─► socket.Read ─► runDown ─ SendDatagram ─► client
//	request stream ─► runCapsules (DATAGRAM capsules go up, others are skipped;
//	                  the stream's end ends the flow)
//	handler goroutine: run ─► waitIdle ─► teardown ─► wait for the three
//
// Nothing but close is shared between the goroutines; close only closes
// done, and the teardown (cancel, stream, socket) runs in run, so that
// every blocked call returns and run can wait for all three.

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/masque-vpn/masque/policy"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// flowEnd says why a flow ended.
type flowEnd uint8

const (
	flowEndClient    flowEnd = iota // the client closed or reset its request stream
	flowEndIdle                     // no datagram either way for the idle timeout
	flowEndShutdown                 // the server is shutting down
	flowEndConn                     // the QUIC connection or the stream failed
	flowEndSocket                   // the UDP socket failed
	flowEndPolicy                   // a policy reload refuses its target
	flowEndMalformed                // the client sent a malformed capsule: the stream was reset
)

func (e flowEnd) String() string {
	switch e {
	case flowEndClient:
		return "client_closed"
	case flowEndIdle:
		return "idle"
	case flowEndShutdown:
		return "shutdown"
	case flowEndConn:
		return "connection_lost"
	case flowEndPolicy:
		return "policy_changed"
	case flowEndMalformed:
		return "malformed_capsule"
	default:
		return "socket_error"
	}
}

// datagramCapsule is the DATAGRAM capsule type (RFC 9297 §3.5): an HTTP
// datagram sent on the stream, e.g. by an intermediary without datagrams.
const datagramCapsule http3.CapsuleType = 0

// contextIDZero is the context ID of UDP payloads (RFC 9298 §4) as a
// one-byte varint; it sits in front of every payload sent to the client.
const contextIDZero = 0

type udpFlow struct {
	p   *udpProxy
	id  uint64
	uc  *net.UDPConn
	str *h3stream    // set before run
	log *slog.Logger // set before run

	// What the policy decided on, to decide again on a reload.
	identity policy.Identity
	target   udpTarget
	addr     netip.Addr // the target's address the socket is connected to

	// in carries the client's datagrams from the connection's dgramMux to
	// runUp; a full queue drops (queue_full), as UDP would.
	in chan []byte

	active                     atomic.Bool // set on every datagram, cleared by waitIdle
	upDatagrams, downDatagrams atomic.Uint64

	once sync.Once
	done chan struct{} // closed by close
	end  flowEnd       // written once, before done is closed
}

func newUDPFlow(p *udpProxy, uc *net.UDPConn, id uint64) *udpFlow {
	return &udpFlow{p: p, uc: uc, id: id, done: make(chan struct{}), in: make(chan []byte, udpInQueueLen)}
}

// close ends the flow for the first reason given; later calls do nothing.
// It does not block.
func (f *udpFlow) close(why flowEnd) {
	f.once.Do(func() {
		f.end = why
		close(f.done)
	})
}

// run carries datagrams until the flow ends and returns why. When it
// returns, the socket is closed, the stream is closed in both directions
// and the flow's goroutines have exited.
func (f *udpFlow) run(ctx context.Context) flowEnd {
	rctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { f.runUp(rctx) })
	wg.Go(f.runDown)
	wg.Go(f.runCapsules)
	f.waitIdle(ctx)

	cancel()
	// RFC 9298 §3.1: the flow ends with its stream. STOP_SENDING tells the
	// client we read no more; the FIN ends our side.
	f.str.CancelRead(quic.StreamErrorCode(http3.ErrCodeNoError))
	f.str.Close()
	f.uc.Close()
	wg.Wait()
	return f.end
}

// waitIdle returns when the flow was closed, its request ended, or no
// datagram went either way for the idle timeout. It checks every eighth
// of the timeout, so the data path only sets a flag per datagram.
func (f *udpFlow) waitIdle(ctx context.Context) {
	idle := f.p.cfg.IdleTimeout
	t := time.NewTicker(max(idle/8, 10*time.Millisecond))
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-f.done:
			return
		case <-ctx.Done():
			f.close(flowEndConn)
			return
		case now := <-t.C:
			if f.active.Swap(false) {
				last = now
			} else if now.Sub(last) >= idle {
				f.close(flowEndIdle)
				return
			}
		}
	}
}

// udpInQueueLen is how many of the client's datagrams may wait for the
// target socket.
const udpInQueueLen = 256

// deliver queues one of the client's datagrams for runUp (datagramSink).
func (f *udpFlow) deliver(d []byte) bool {
	select {
	case f.in <- d:
	default:
		f.p.counters.drops[udpDropQueueFull].Add(1)
	}
	return false
}

func (f *udpFlow) flush() {}

// dropQueued drops and counts the client's datagrams still queued for the
// target once the flow has ended and left the connection's mux.
func (f *udpFlow) dropQueued() {
	for {
		select {
		case <-f.in:
			f.p.counters.drops[udpDropFlowEnded].Add(1)
		default:
			return
		}
	}
}

// runUp forwards the client's HTTP datagrams to the target until the
// stream or the flow ends.
func (f *udpFlow) runUp(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	// The stream's context ends when the client stops our side of it
	// (STOP_SENDING) or the connection ends; runCapsules sees the rest.
	wg.Go(func() {
		select {
		case <-f.str.Context().Done():
			f.close(streamEnd(context.Cause(f.str.Context())))
		case <-ctx.Done():
		}
	})
	for {
		select {
		case d := <-f.in:
			// quic-go hands over a fresh slice per datagram; nothing to return.
			if !f.forwardUp(d) {
				return
			}
		case <-f.done:
			return
		case <-ctx.Done():
			return
		}
	}
}

// forwardUp sends one HTTP datagram's UDP payload to the target. It returns
// false once the socket is closed.
func (f *udpFlow) forwardUp(d []byte) bool {
	c := f.p.counters
	id, n, err := quicvarint.Parse(d)
	switch {
	case err != nil:
		c.drops[udpDropMalformed].Add(1)
		return true
	case id != contextIDZero:
		// RFC 9298 §4: unknown context IDs are dropped (or buffered).
		c.drops[udpDropContextID].Add(1)
		return true
	}
	payload := d[n:]
	if _, err := f.uc.Write(payload); err != nil {
		switch {
		case isClosed(err):
			return false
		case errors.Is(err, syscall.ECONNREFUSED):
			// An ICMP port unreachable for an earlier datagram.
			c.drops[udpDropUnreachable].Add(1)
		default:
			c.drops[udpDropTargetWrite].Add(1)
		}
		return true
	}
	c.upDatagrams.Add(1)
	c.upBytes.Add(uint64(len(payload)))
	f.upDatagrams.Add(1)
	f.active.Store(true)
	return true
}

// runDown forwards the target's datagrams to the client until the socket
// is closed. A datagram that does not fit the connection's datagram budget
// is dropped and counted: UDP has no fragments to fall back on.
func (f *udpFlow) runDown() {
	c := f.p.counters
	b := getSmallBuf()
	defer putSmallBuf(b)
	b[0] = contextIDZero
	// The buffer is larger than any QUIC datagram (quic-go caps packets at
	// 1452 bytes), so a read that fills it was too big to send, truncated or not.
	rd := b[1:]
	for {
		n, err := f.uc.Read(rd)
		if err != nil {
			switch {
			case isClosed(err):
				return
			case errors.Is(err, syscall.ECONNREFUSED):
				c.drops[udpDropUnreachable].Add(1)
				continue
			}
			f.close(flowEndSocket)
			return
		}
		if n >= len(rd) {
			c.drops[udpDropTooBig].Add(1)
			continue
		}
		// SendDatagram copies the payload: b is reused at once.
		if err := f.str.SendDatagram(b[:1+n]); err != nil {
			if _, ok := errors.AsType[*quic.DatagramTooLargeError](err); ok {
				c.drops[udpDropTooBig].Add(1)
				continue
			}
			c.drops[udpDropSendFailed].Add(1)
			f.close(streamEnd(err))
			return
		}
		c.downDatagrams.Add(1)
		c.downBytes.Add(uint64(n))
		f.downDatagrams.Add(1)
		f.active.Store(true)
	}
}

// runCapsules reads the request stream until it ends, which ends the flow.
// DATAGRAM capsules are forwarded like HTTP datagrams; other capsule types
// are skipped (RFC 9297 §3.2) and counted. A stream that ends inside a
// capsule is a malformed message (RFC 9297 §3.3): the stream is reset with
// H3_MESSAGE_ERROR.
func (f *udpFlow) runCapsules() {
	var buf *smallBuf
	defer func() {
		if buf != nil {
			putSmallBuf(buf)
		}
	}()
	c := f.p.counters
	end := func(err error) {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			c.capsuleDrops[capsuleDropMalformed].Add(1)
			f.close(flowEndMalformed) // first: the reset ends runUp's watch too
			f.str.CancelRead(quic.StreamErrorCode(errCodeH3MessageError))
			f.str.CancelWrite(quic.StreamErrorCode(errCodeH3MessageError))
			return
		}
		f.close(streamEnd(err))
	}
	parser := http3.NewCapsuleParser(f.str)
	for {
		ct, r, err := parser.Next()
		if err != nil {
			end(err)
			return
		}
		if ct == datagramCapsule {
			if buf == nil {
				buf = getSmallBuf()
			}
			n, tooBig, err := readCapsule(r, buf[:])
			switch {
			case err != nil:
				end(err)
				return
			case tooBig:
				c.drops[udpDropTooBig].Add(1)
			case !f.forwardUp(buf[:n]):
				return
			}
			continue
		}
		c.capsuleDrops[capsuleDropUnknown].Add(1)
		if err := r.Discard(); err != nil {
			end(err)
			return
		}
	}
}

// readCapsule reads a capsule's whole content into b. Content that does
// not fit b is discarded and reported as tooBig. A stream that ends inside
// the capsule is an error (io.ErrUnexpectedEOF), never a short payload.
func readCapsule(r io.Reader, b []byte) (n int, tooBig bool, err error) {
	for n < len(b) {
		m, err := r.Read(b[n:])
		n += m
		if err == io.EOF {
			return n, false, nil
		}
		if err != nil {
			return n, false, err
		}
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return n, true, err
	}
	return n, true, nil
}

// streamEnd classifies the error that ended reading or writing the stream.
func streamEnd(err error) flowEnd {
	if errors.Is(err, io.EOF) {
		return flowEndClient
	}
	if _, ok := errors.AsType[*quic.StreamError](err); ok {
		return flowEndClient
	}
	return flowEndConn
}
