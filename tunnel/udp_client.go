package tunnel

// The client side of CONNECT-UDP: a forwarder that listens on local UDP
// sockets and carries each local peer's datagrams in a CONNECT-UDP flow of
// its own, all over one QUIC connection.
//
//	local peer ─► runListener (one per forward) ─► flow.send ─ SendDatagram ─► server
//	server ─ HTTP datagram ─► flow.runDown (one per flow) ─► socket.WriteTo(peer)
//	request stream ─► flow.runStream (one per flow: set-up, then capsules until the end)
//	runReaper (one): closes idle flows and forgets refused ones
//
// Lock order: UDPForwarder.mu before udpClientFlow.mu.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
	"github.com/yosida95/uritemplate/v3"
)

// Defaults of [UDPForwarderConfig].
const (
	// DefaultUDPClientMaxFlows caps the forwarder's flows; it matches the
	// server's default per-connection limit.
	DefaultUDPClientMaxFlows = DefaultUDPMaxFlowsPerConn
	// udpSetupQueueLen is how many datagrams a flow holds while its request
	// is under way; more are dropped (queue_full).
	udpSetupQueueLen = 32
	// udpSocketBuffer is the buffer size asked for on UDP sockets that
	// carry flows.
	udpSocketBuffer = 4 << 20
	// udpRefusedHold is how long the datagrams of a peer whose flow the
	// server refused are dropped before a new request is tried.
	udpRefusedHold = time.Second
)

// UDPRefusedError is a flow request that the server answered with a
// non-2xx status.
type UDPRefusedError struct {
	Status      int
	ProxyStatus string // the Proxy-Status header, if any
}

func (e *UDPRefusedError) Error() string { return refusedText("flow", e.Status, e.ProxyStatus) }

// UDPForward is one local listener and the target its datagrams go to.
type UDPForward struct {
	// Listen is the local UDP address, e.g. "127.0.0.1:5353".
	Listen string
	// Target is the remote "host:port"; the server resolves the host.
	Target string
}

// UDPForwarderConfig configures [NewUDPForwarder].
type UDPForwarderConfig struct {
	// Conn is an established QUIC connection to the server, with datagrams.
	// The forwarder does not close it.
	Conn *quic.Conn
	// Redial, if set, opens a new connection to the server when a flow
	// needs one and the current connection has ended (the server restarted,
	// or closed a connection that had no flow for a while): Run then
	// carries on instead of returning ErrUDPConnLost. The caller owns, and
	// closes, every connection Redial returns.
	Redial func(ctx context.Context) (*quic.Conn, error)
	// Template is the server's CONNECT-UDP URI template (RFC 9298 §2),
	// with the variables target_host and target_port. Empty means the
	// default template on Authority.
	Template string
	// Authority is the server's "host:port" as the user named it; used for
	// the default template.
	Authority string
	// Token, if set, is sent as "Authorization: Bearer <Token>".
	Token string
	// Forwards lists the listeners. At least one is required.
	Forwards []UDPForward
	// IdleTimeout closes a flow after that long without a datagram in
	// either direction (DefaultUDPIdleTimeout).
	IdleTimeout time.Duration
	// MaxFlows caps the open flows; at the cap a new peer's flow replaces
	// the least recently active one (DefaultUDPClientMaxFlows).
	MaxFlows int
	// SetupTimeout bounds each flow's request (DefaultSetupTimeout).
	SetupTimeout time.Duration
	// Logger receives lifecycle logs; nil discards them.
	Logger *slog.Logger
}

// UDPForwarder carries local UDP traffic over CONNECT-UDP flows. Create it
// with NewUDPForwarder, then call Run.
type UDPForwarder struct {
	cfg     UDPForwarderConfig
	log     *slog.Logger
	tmpl    *uritemplate.Template
	conn    atomic.Pointer[udpServerConn] // the connection flows are opened on
	dialMu  sync.Mutex                    // one redial at a time
	fwds    []*udpListener
	started time.Time
	stats   udpClientCounters
	wg      sync.WaitGroup // every goroutine of the forwarder and its flows
	refLog  rateLimit

	mu     sync.Mutex // guards the fields below
	flows  map[udpFlowKey]*udpClientFlow
	closed bool
}

// udpListener is one forward's socket.
type udpListener struct {
	fwd   UDPForward
	host  string // target host and port for the template
	port  string
	pc    *net.UDPConn
	flows atomic.Int64
}

type udpFlowKey struct {
	l    *udpListener
	peer netip.AddrPort
}

type udpClientCounters struct {
	flowsTotal, flowsRefused atomic.Uint64
	txDatagrams, txBytes     atomic.Uint64 // to the server
	rxDatagrams, rxBytes     atomic.Uint64 // from the server
	drops                    [numUDPDrops]atomic.Uint64
	maxPayload               atomic.Int64 // largest UDP payload that fits, as last learnt; 0 unknown
	lastRefusal              atomic.Pointer[string]
	redials                  atomic.Uint64
}

// NewUDPForwarder validates cfg and opens the listening sockets. Close it
// (or Run it until its context ends) to release them.
func NewUDPForwarder(cfg UDPForwarderConfig) (*UDPForwarder, error) {
	if cfg.Conn == nil {
		return nil, errors.New("connect-udp: no connection")
	}
	if len(cfg.Forwards) == 0 {
		return nil, errors.New("connect-udp: nothing to forward")
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultUDPIdleTimeout
	}
	if cfg.MaxFlows <= 0 {
		cfg.MaxFlows = DefaultUDPClientMaxFlows
	}
	if cfg.SetupTimeout <= 0 {
		cfg.SetupTimeout = DefaultSetupTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	raw := cfg.Template
	if raw == "" {
		raw = "https://" + cfg.Authority + UDPPathPrefix + udpTemplateVars
	}
	tmpl, err := uritemplate.New(raw)
	if err != nil {
		return nil, fmt.Errorf("connect-udp: template %q: %v", raw, err)
	}
	if !hasVars(tmpl, "target_host", "target_port") {
		return nil, fmt.Errorf("connect-udp: template %q lacks {target_host} or {target_port}", raw)
	}
	f := &UDPForwarder{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "connect-udp"),
		tmpl:    tmpl,
		flows:   make(map[udpFlowKey]*udpClientFlow),
		refLog:  rateLimit{interval: 5 * time.Second},
		started: time.Now(),
	}
	for _, fw := range cfg.Forwards {
		host, port, err := net.SplitHostPort(fw.Target)
		if err != nil || host == "" {
			f.closeListeners()
			return nil, fmt.Errorf("connect-udp: target %q: want HOST:PORT", fw.Target)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			f.closeListeners()
			return nil, fmt.Errorf("connect-udp: target %q: port is not 1-65535", fw.Target)
		}
		laddr, err := net.ResolveUDPAddr("udp", fw.Listen)
		if err != nil {
			f.closeListeners()
			return nil, fmt.Errorf("connect-udp: listen %s: %v", fw.Listen, err)
		}
		pc, err := net.ListenUDP("udp", laddr)
		if err != nil {
			f.closeListeners()
			return nil, fmt.Errorf("connect-udp: %v", err)
		}
		// Room for bursts while a flow's sends wait for the QUIC
		// connection (the kernel caps this at net.core.rmem_max).
		pc.SetReadBuffer(udpSocketBuffer)
		pc.SetWriteBuffer(udpSocketBuffer)
		f.fwds = append(f.fwds, &udpListener{fwd: fw, host: host, port: port, pc: pc})
	}
	f.conn.Store(newUDPServerConn(cfg.Conn))
	return f, nil
}

// udpServerConn is one QUIC connection to the server with its HTTP/3
// client side.
type udpServerConn struct {
	qc *quic.Conn
	h3 *http3.ClientConn
	// retired is set when the server refused a new request stream on a
	// connection that is still up: it sent GOAWAY and is draining. Its
	// flows carry on; new ones go on a new connection.
	retired atomic.Bool
}

// usable reports whether new flows may go on c.
func (c *udpServerConn) usable() bool { return c.qc.Context().Err() == nil && !c.retired.Load() }

func newUDPServerConn(qc *quic.Conn) *udpServerConn {
	tr := &http3.Transport{EnableDatagrams: true}
	return &udpServerConn{qc: qc, h3: tr.NewClientConn(qc)}
}

// serverConn returns the connection to open a flow on: the current one,
// or, when that has ended and Redial is set, a new one.
func (f *UDPForwarder) serverConn(ctx context.Context) (*udpServerConn, error) {
	c := f.conn.Load()
	if c.usable() || f.cfg.Redial == nil {
		return c, nil
	}
	f.dialMu.Lock()
	defer f.dialMu.Unlock()
	if c = f.conn.Load(); c.usable() {
		return c, nil // another flow redialled first
	}
	qc, err := f.cfg.Redial(ctx)
	if err != nil {
		return nil, fmt.Errorf("reconnect: %w", err)
	}
	c = newUDPServerConn(qc)
	f.conn.Store(c)
	f.stats.redials.Add(1)
	f.log.Info("reconnected to the server")
	return c, nil
}

func hasVars(t *uritemplate.Template, names ...string) bool {
	vars := t.Varnames()
	for _, n := range names {
		found := false
		for _, v := range vars {
			found = found || v == n
		}
		if !found {
			return false
		}
	}
	return true
}

func (f *UDPForwarder) closeListeners() {
	for _, l := range f.fwds {
		l.pc.Close()
	}
}

// ListenAddrs returns the bound local addresses, in the order of Forwards
// (useful with port 0).
func (f *UDPForwarder) ListenAddrs() []netip.AddrPort {
	out := make([]netip.AddrPort, len(f.fwds))
	for i, l := range f.fwds {
		out[i] = l.pc.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	return out
}

// ErrUDPConnLost is returned by Run when the QUIC connection to the server
// ended.
var ErrUDPConnLost = errors.New("connection to the server lost")

// Run forwards until ctx is done (it returns nil) or, without Redial, the
// connection to the server ends (it returns an error wrapping
// ErrUDPConnLost). When Run returns, the sockets are closed, every flow is
// closed and every goroutine has exited.
func (f *UDPForwarder) Run(ctx context.Context) error {
	for _, l := range f.fwds {
		f.wg.Go(func() { f.runListener(l) })
	}
	f.wg.Go(func() { f.runReaper(ctx) })
	var lost <-chan struct{} // nil with Redial: a lost connection is redialled
	if f.cfg.Redial == nil {
		lost = f.cfg.Conn.Context().Done()
	}
	var err error
	select {
	case <-ctx.Done():
	case <-lost:
		err = fmt.Errorf("%w: %v", ErrUDPConnLost, context.Cause(f.cfg.Conn.Context()))
	}
	f.Close()
	return err
}

// Close closes the sockets and every flow, and waits for the forwarder's
// goroutines. It is idempotent.
func (f *UDPForwarder) Close() error {
	f.mu.Lock()
	already := f.closed
	f.closed = true
	flows := make([]*udpClientFlow, 0, len(f.flows))
	for _, fl := range f.flows {
		flows = append(flows, fl)
	}
	f.mu.Unlock()
	if !already {
		f.closeListeners()
	}
	for _, fl := range flows {
		fl.close()
	}
	f.wg.Wait()
	return nil
}

// runListener reads the local socket of l and hands each datagram to its
// peer's flow, creating flows as peers appear. It returns when the socket is
// closed.
func (f *UDPForwarder) runListener(l *udpListener) {
	b := getSmallBuf()
	defer putSmallBuf(b)
	// The payload goes after room for the context ID, so that a flow sends
	// straight from this buffer. The buffer is larger than any QUIC
	// datagram, so a read that fills it is too big, truncated or not.
	b[0] = contextIDZero
	rd := b[1:]
	for {
		n, peer, err := l.pc.ReadFromUDPAddrPort(rd)
		if err != nil {
			if isClosed(err) {
				return
			}
			continue // e.g. ICMP errors for earlier replies to a peer
		}
		if n >= len(rd) {
			f.stats.drops[udpDropTooBig].Add(1)
			continue
		}
		fl := f.flow(l, peer)
		if fl == nil {
			return // closed
		}
		fl.send(b[:1+n])
	}
}

// flow returns the flow of (l, peer), starting one if there is none; nil
// once the forwarder is closed.
func (f *UDPForwarder) flow(l *udpListener, peer netip.AddrPort) *udpClientFlow {
	key := udpFlowKey{l, peer}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	if fl, ok := f.flows[key]; ok {
		f.mu.Unlock()
		return fl
	}
	var evict *udpClientFlow
	if len(f.flows) >= f.cfg.MaxFlows {
		evict = f.leastActiveLocked()
		delete(f.flows, evict.key)
	}
	fl := newUDPClientFlow(f, key)
	f.flows[key] = fl
	l.flows.Add(1)
	f.stats.flowsTotal.Add(1)
	f.wg.Go(fl.runStream)
	f.mu.Unlock()
	if evict != nil {
		evict.close()
	}
	return fl
}

// leastActiveLocked returns the flow with the oldest activity. f.mu is held
// and f.flows is not empty.
func (f *UDPForwarder) leastActiveLocked() *udpClientFlow {
	var old *udpClientFlow
	for _, fl := range f.flows {
		if old == nil || fl.lastSeen.Load() < old.lastSeen.Load() {
			old = fl
		}
	}
	return old
}

// forget removes fl from the table if it is still there.
func (f *UDPForwarder) forget(fl *udpClientFlow) {
	f.mu.Lock()
	if f.flows[fl.key] == fl {
		delete(f.flows, fl.key)
	}
	f.mu.Unlock()
}

// runReaper closes flows idle for the idle timeout and forgets refused
// flows after their hold time, until ctx is done or the forwarder closes.
func (f *UDPForwarder) runReaper(ctx context.Context) {
	tick := min(max(f.cfg.IdleTimeout/8, 10*time.Millisecond), time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	var expired []*udpClientFlow
	var lost <-chan struct{}
	if f.cfg.Redial == nil {
		lost = f.cfg.Conn.Context().Done()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-lost:
			return
		case now := <-t.C:
			ns := now.UnixNano()
			expired = expired[:0]
			f.mu.Lock()
			if f.closed {
				f.mu.Unlock()
				return
			}
			for _, fl := range f.flows {
				if fl.active.Swap(false) {
					fl.lastSeen.Store(ns)
					continue
				}
				hold := f.cfg.IdleTimeout
				if fl.refused.Load() {
					hold = udpRefusedHold
				}
				if time.Duration(ns-fl.lastSeen.Load()) >= hold {
					expired = append(expired, fl)
				}
			}
			f.mu.Unlock()
			for _, fl := range expired {
				fl.close()
			}
		}
	}
}

// UDPForwarderStats are a forwarder's counters. Tx is towards the server
// (local peers to targets), Rx from it.
type UDPForwarderStats struct {
	Flows                int
	FlowsTotal           uint64
	FlowsRefused         uint64
	TxDatagrams, TxBytes uint64
	RxDatagrams, RxBytes uint64
	Drops                map[string]uint64
	MaxPayload           int // largest UDP payload that fit when last learnt; 0 unknown
	LastRefusal          string
	Redials              uint64 // connections opened after the first was lost
	RTT, Uptime          time.Duration
	Forwards             []UDPForwardStats
	IdleTimeout          time.Duration
	MaxFlows             int
}

// UDPForwardStats describes one forward.
type UDPForwardStats struct {
	Listen string
	Target string
	Flows  int
}

// Stats returns a snapshot of the forwarder's counters.
func (f *UDPForwarder) Stats() UDPForwarderStats {
	st := UDPForwarderStats{
		FlowsTotal:   f.stats.flowsTotal.Load(),
		FlowsRefused: f.stats.flowsRefused.Load(),
		TxDatagrams:  f.stats.txDatagrams.Load(),
		TxBytes:      f.stats.txBytes.Load(),
		RxDatagrams:  f.stats.rxDatagrams.Load(),
		RxBytes:      f.stats.rxBytes.Load(),
		MaxPayload:   int(f.stats.maxPayload.Load()),
		RTT:          f.conn.Load().qc.ConnectionStats().SmoothedRTT,
		Redials:      f.stats.redials.Load(),
		Drops:        make(map[string]uint64),
		IdleTimeout:  f.cfg.IdleTimeout,
		MaxFlows:     f.cfg.MaxFlows,
	}
	st.Uptime = time.Since(f.started)
	if s := f.stats.lastRefusal.Load(); s != nil {
		st.LastRefusal = *s
	}
	for d := range numUDPDrops {
		if v := f.stats.drops[d].Load(); v > 0 {
			st.Drops[d.String()] = v
		}
	}
	for i, l := range f.fwds {
		n := int(l.flows.Load())
		st.Flows += n
		st.Forwards = append(st.Forwards, UDPForwardStats{Listen: f.ListenAddrs()[i].String(), Target: l.fwd.Target, Flows: n})
	}
	return st
}

// udpClientFlow is one local peer's CONNECT-UDP flow. Its life: dialing
// (datagrams queue up) → ready (datagrams go straight out) or refused
// (datagrams are dropped until the reaper forgets it) → closed.
type udpClientFlow struct {
	f   *UDPForwarder
	key udpFlowKey

	str      atomic.Pointer[http3.RequestStream] // set once ready
	idLen    int                                 // length of the quarter stream ID varint, set before str
	active   atomic.Bool                         // a datagram went either way since the reaper looked
	lastSeen atomic.Int64                        // unix ns of the last activity the reaper saw
	refused  atomic.Bool

	ctx    context.Context // ends with the flow
	cancel context.CancelFunc

	mu     sync.Mutex // guards the fields below
	queue  [][]byte   // datagrams (with context ID) waiting for the flow
	closed bool
}

func newUDPClientFlow(f *UDPForwarder, key udpFlowKey) *udpClientFlow {
	fl := &udpClientFlow{f: f, key: key}
	fl.ctx, fl.cancel = context.WithCancel(context.Background())
	fl.lastSeen.Store(time.Now().UnixNano())
	return fl
}

// send sends one datagram (context ID and payload) of the local peer, or
// queues it while the flow is being set up. d is the caller's to reuse on
// return.
func (fl *udpClientFlow) send(d []byte) {
	st := &fl.f.stats
	if str := fl.str.Load(); str != nil {
		fl.sendNow(str, d)
		return
	}
	fl.mu.Lock()
	if str := fl.str.Load(); str != nil {
		fl.mu.Unlock()
		fl.sendNow(str, d)
		return
	}
	switch {
	case fl.refused.Load() || fl.closed:
		fl.mu.Unlock()
		st.drops[udpDropRefused].Add(1)
		return
	case len(fl.queue) >= udpSetupQueueLen:
		fl.mu.Unlock()
		st.drops[udpDropQueueFull].Add(1)
		return
	}
	fl.queue = append(fl.queue, append([]byte(nil), d...))
	fl.mu.Unlock()
}

// sendNow sends d on str. A datagram that does not fit is dropped and
// counted, and the budget it reported is remembered.
func (fl *udpClientFlow) sendNow(str *http3.RequestStream, d []byte) {
	st := &fl.f.stats
	// SendDatagram copies d.
	if err := str.SendDatagram(d); err != nil {
		if tl, ok := errors.AsType[*quic.DatagramTooLargeError](err); ok {
			st.drops[udpDropTooBig].Add(1)
			// The budget counts the whole HTTP datagram: quarter stream ID
			// and context ID come off it.
			st.maxPayload.Store(tl.MaxDatagramPayloadSize - int64(fl.idLen) - 1)
			return
		}
		st.drops[udpDropSendFailed].Add(1)
		return
	}
	st.txDatagrams.Add(1)
	st.txBytes.Add(uint64(len(d) - 1))
	fl.active.Store(true)
}

// close ends the flow: the stream is closed both ways and the goroutines
// return. It does not wait; Forwarder.Close does.
func (fl *udpClientFlow) close() {
	fl.mu.Lock()
	if fl.closed {
		fl.mu.Unlock()
		return
	}
	fl.closed = true
	fl.queue = nil
	fl.mu.Unlock()
	fl.f.forget(fl)
	fl.key.l.flows.Add(-1)
	fl.cancel()
	if str := fl.str.Load(); str != nil {
		str.CancelRead(quic.StreamErrorCode(http3.ErrCodeNoError))
		str.Close()
	}
}

// runStream sets the flow up, then reads its request stream until it ends
// (capsules: DATAGRAM ones go down, others are skipped), which closes the
// flow.
func (fl *udpClientFlow) runStream() {
	f := fl.f
	str, rsp, err := f.dial(fl.ctx, fl.key.l.host, fl.key.l.port)
	if err != nil && fl.ctx.Err() != nil {
		return // closed (evicted, or the forwarder closed) while dialing
	}
	if err != nil {
		f.stats.flowsRefused.Add(1)
		msg := err.Error()
		f.stats.lastRefusal.Store(&msg)
		if f.refLog.allow() {
			attrs := []any{"listen", fl.key.l.fwd.Listen, "target", fl.key.l.fwd.Target, "err", err}
			if rsp != nil {
				attrs = append(attrs, "status", rsp.StatusCode, "proxy_status", rsp.Header.Get("Proxy-Status"))
			}
			f.log.Warn("udp flow refused", attrs...)
		}
		fl.mu.Lock()
		dropped := len(fl.queue)
		fl.queue = nil
		fl.refused.Store(true)
		fl.mu.Unlock()
		f.stats.drops[udpDropRefused].Add(uint64(dropped))
		// The reaper forgets the flow after udpRefusedHold.
		fl.lastSeen.Store(time.Now().UnixNano())
		return
	}
	fl.idLen = quicvarint.Len(uint64(str.StreamID() / 4))
	fl.mu.Lock()
	if fl.closed {
		fl.mu.Unlock()
		str.CancelRead(quic.StreamErrorCode(http3.ErrCodeNoError))
		str.Close()
		return
	}
	for _, d := range fl.queue {
		fl.sendNow(str, d)
	}
	fl.queue = nil
	fl.str.Store(str)
	fl.mu.Unlock()
	f.log.Debug("udp flow up", "listen", fl.key.l.fwd.Listen, "peer", fl.key.peer, "target", fl.key.l.fwd.Target)

	f.wg.Go(func() { fl.runDown(str) })
	var buf *smallBuf
	defer func() {
		if buf != nil {
			putSmallBuf(buf)
		}
	}()
	parser := http3.NewCapsuleParser(str)
	for {
		ct, r, err := parser.Next()
		if err != nil {
			break
		}
		if ct == datagramCapsule {
			if buf == nil {
				buf = getSmallBuf()
			}
			n, tooBig, err := readCapsule(r, buf[:])
			if err != nil {
				break
			}
			if tooBig {
				f.stats.drops[udpDropTooBig].Add(1)
				continue
			}
			fl.deliver(buf[:n])
			continue
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			break
		}
	}
	fl.close()
}

// Check opens and closes one flow to each target, so that wrong
// credentials, a refused target or a server without CONNECT-UDP show when
// the forwarder starts rather than as dropped datagrams later. It returns
// the first failure; a refusal is a *UDPRefusedError.
func (f *UDPForwarder) Check(ctx context.Context) error {
	seen := map[string]bool{}
	for _, l := range f.fwds {
		if seen[l.fwd.Target] {
			continue
		}
		seen[l.fwd.Target] = true
		str, _, err := f.dial(ctx, l.host, l.port)
		if err != nil {
			return fmt.Errorf("flow to %s: %w", l.fwd.Target, err)
		}
		str.CancelRead(quic.StreamErrorCode(http3.ErrCodeNoError))
		str.Close()
	}
	return nil
}

// dial sends a CONNECT-UDP request for host:port and waits for a 2xx
// response. The flow lives as long as flowCtx (the request's context).
func (f *UDPForwarder) dial(flowCtx context.Context, host, port string) (*http3.RequestStream, *http.Response, error) {
	ctx, cancel := context.WithTimeout(flowCtx, f.cfg.SetupTimeout)
	defer cancel()
	c, err := f.serverConn(ctx)
	if err != nil {
		return nil, nil, err
	}
	str, rsp, err := f.request(ctx, flowCtx, c, host, port)
	// The connection may have ended just as the request went out (the
	// server closes one that carried no flow for a while), or the server
	// may be draining it (GOAWAY): once more on a new one.
	if err != nil && rsp == nil && f.cfg.Redial != nil && !c.usable() && ctx.Err() == nil {
		if c, err = f.serverConn(ctx); err != nil {
			return nil, nil, err
		}
		str, rsp, err = f.request(ctx, flowCtx, c, host, port)
	}
	return str, rsp, err
}

// request sends one CONNECT-UDP request on c; see dial.
func (f *UDPForwarder) request(ctx, flowCtx context.Context, c *udpServerConn, host, port string) (*http3.RequestStream, *http.Response, error) {
	select {
	case <-c.h3.ReceivedSettings():
	case <-ctx.Done():
		return nil, nil, errors.New("no HTTP/3 settings from the server")
	}
	if s := c.h3.Settings(); !s.EnableExtendedConnect || !s.EnableDatagrams {
		return nil, nil, errors.New("server does not support extended CONNECT with datagrams")
	}
	raw, err := f.tmpl.Expand(uritemplate.Values{
		"target_host": uritemplate.String(host),
		"target_port": uritemplate.String(port),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("expand template: %v", err)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("request URI %q: %v", raw, err)
	}
	req := &http.Request{
		Method: http.MethodConnect,
		Proto:  "connect-udp", // the :protocol pseudo-header, RFC 9298 §3.4
		Host:   u.Host,
		URL:    u,
		Header: http.Header{http3.CapsuleProtocolHeader: {"?1"}},
	}
	req = req.WithContext(flowCtx)
	if f.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+f.cfg.Token)
	}
	str, err := c.h3.OpenRequestStream(ctx)
	if err != nil {
		if c.qc.Context().Err() == nil && ctx.Err() == nil {
			// http3 opens no request after the server's GOAWAY.
			if !c.retired.Swap(true) {
				f.log.Info("server is going away (GOAWAY): new flows go on a new connection")
			}
		}
		return nil, nil, fmt.Errorf("open request stream: %v", err)
	}
	fail := func() {
		str.CancelRead(quic.StreamErrorCode(http3.ErrCodeRequestCanceled))
		str.CancelWrite(quic.StreamErrorCode(http3.ErrCodeRequestCanceled))
	}
	if err := str.SendRequestHeader(req); err != nil {
		fail()
		return nil, nil, fmt.Errorf("send request: %v", err)
	}
	deadline, _ := ctx.Deadline()
	str.SetReadDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { str.SetReadDeadline(time.Now()) })
	rsp, err := str.ReadResponse()
	stop()
	str.SetReadDeadline(time.Time{})
	if err != nil {
		fail()
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("no response within %s", f.cfg.SetupTimeout)
		}
		if he, ok := errors.AsType[*http3.Error](err); ok && he.ErrorCode == http3.ErrCodeRequestRejected {
			// Sent before the server's GOAWAY reached us, and not
			// processed (RFC 9114 §5.2): it may go elsewhere.
			c.retired.Store(true)
		}
		return nil, nil, fmt.Errorf("read response: %v", err)
	}
	if rsp.StatusCode < 200 || rsp.StatusCode > 299 {
		fail()
		return nil, rsp, &UDPRefusedError{Status: rsp.StatusCode, ProxyStatus: rsp.Header.Get("Proxy-Status")}
	}
	return str, rsp, nil
}

// runDown delivers the server's datagrams to the local peer until the
// stream or the flow ends.
func (fl *udpClientFlow) runDown(str *http3.RequestStream) {
	for {
		d, err := str.ReceiveDatagram(fl.ctx)
		if err != nil {
			fl.close()
			return
		}
		fl.deliver(d)
	}
}

// deliver writes one HTTP datagram's UDP payload to the local peer.
func (fl *udpClientFlow) deliver(d []byte) {
	st := &fl.f.stats
	id, n, err := quicvarint.Parse(d)
	switch {
	case err != nil:
		st.drops[udpDropMalformed].Add(1)
		return
	case id != contextIDZero:
		st.drops[udpDropContextID].Add(1)
		return
	}
	if _, err := fl.key.l.pc.WriteToUDPAddrPort(d[n:], fl.key.peer); err != nil {
		st.drops[udpDropTargetWrite].Add(1)
		return
	}
	st.rxDatagrams.Add(1)
	st.rxBytes.Add(uint64(len(d) - n))
	fl.active.Store(true)
}

// rateLimit allows one event per interval.
type rateLimit struct {
	interval time.Duration
	mu       sync.Mutex
	last     time.Time
}

func (r *rateLimit) allow() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if now.Sub(r.last) < r.interval {
		return false
	}
	r.last = now
	return true
}
