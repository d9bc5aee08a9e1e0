package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/masque-vpn/masque/policy"
	"github.com/masque-vpn/masque/quicio"
	"github.com/quic-go/quic-go/http3"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// These tests run an Agent against real Servers behind real quicio.Servers
// on loopback QUIC (serveTest). The host is a fake that hands out an
// in-memory TUN and records what the Agent asked of it.

// agentDialTimeout bounds each of the tests' dials: a dial to a server
// that does not answer fails well before the test's own waits do.
const agentDialTimeout = 3 * time.Second

// agentWait bounds every wait for something the Agent does.
const agentWait = 5 * time.Second

// agentHost is the Host of the Agent tests: Up hands out an in-memory TUN,
// Move records the leases it is asked to move between and returns moveErr.
type agentHost struct {
	dev     *tuntest.ChannelTUN
	moveErr error

	mu    sync.Mutex // guards ups and moves
	ups   []AgentServer
	moves []agentMove
}

// agentMove is one call of Host.Move.
type agentMove struct {
	server   AgentServer
	from, to []netip.Prefix // the old and the new session's leases
}

var _ Host = (*agentHost)(nil)

func (h *agentHost) Up(_ context.Context, s AgentServer, _ *Client) (Device, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ups = append(h.ups, s)
	return h.dev.TUN(), nil
}

func (h *agentHost) Move(s AgentServer, old, c *Client) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.moves = append(h.moves, agentMove{server: s, from: old.Lease(), to: c.Lease()})
	return h.moveErr
}

func (h *agentHost) InnerMTU() int { return 1400 }

func (h *agentHost) calls() (ups []AgentServer, moves []agentMove) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]AgentServer(nil), h.ups...), append([]agentMove(nil), h.moves...)
}

// agentOpts changes how newAgentRig sets the Agent up.
type agentOpts struct {
	token     string // testToken if empty
	reconnect bool
	// holdOthers holds the dials to every server but the first until the
	// first session is up, so that the first server wins the start race.
	holdOthers bool
	moveErr    error
	// connected, if set, is called when a session to s is up, before
	// the Agent has it.
	connected func(s AgentServer)
}

// agentRig runs an Agent whose Dial is quicio.Dial and whose Connect is
// Connect, counting both by server address.
type agentRig struct {
	servers []AgentServer
	host    *agentHost
	agent   *Agent
	events  chan AgentEvent
	logs    recordCounter // the Agent's own log records
	back    *attrLog      // the Agent's last "tunnel back" record
	tls     map[string]*tls.Config
	token   string
	hold    chan struct{} // closed by AgentUp when opts.holdOthers
	onUp    func(AgentServer)
	clog    *slog.Logger

	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned runErr
	runErr error

	mu       sync.Mutex // guards dials, connects and conns
	dials    map[string]int
	connects map[string]int
	conns    []*quicio.ClientConn
}

// newAgentRig returns an Agent for servers, in that order, and stops it
// at the end of the test, before the servers stop (call it after starting
// them). Run it with run.
func newAgentRig(t *testing.T, opts agentOpts, servers ...*testServer) *agentRig {
	t.Helper()
	r := &agentRig{
		host:   &agentHost{dev: tuntest.NewChannelTUN(), moveErr: opts.moveErr},
		events: make(chan AgentEvent, 64),
		logs:   newRecordCounter(slog.NewTextHandler(t.Output(), nil)),
		tls:    make(map[string]*tls.Config),
		token:  opts.token,
		onUp:   opts.connected,
		clog:   slog.New(slog.NewTextHandler(t.Output(), nil)),
		done:   make(chan struct{}),
		dials:  make(map[string]int), connects: make(map[string]int),
	}
	r.back = &attrLog{Handler: r.logs, msg: "tunnel back"}
	if r.token == "" {
		r.token = testToken
	}
	if opts.holdOthers {
		r.hold = make(chan struct{})
	}
	for _, ts := range servers {
		r.servers = append(r.servers, AgentServer{Addr: ts.addr, Authority: ts.addr})
		r.tls[ts.addr] = ts.tls
	}
	a, err := NewAgent(AgentConfig{
		Servers:   r.servers,
		Dial:      r.dial,
		Connect:   r.connect,
		Host:      r.host,
		Reconnect: opts.reconnect,
		OnEvent:   func(e AgentEvent) { r.onEvent(t, e) },
		Logger:    slog.New(r.back),
	})
	if err != nil {
		t.Fatal(err)
	}
	r.agent = a
	t.Cleanup(func() {
		if r.cancel != nil {
			r.cancel()
			select {
			case <-r.done:
			case <-time.After(agentWait):
				t.Errorf("Run still running %v after its context was cancelled", agentWait)
			}
		}
		// The host owns the TUN: closing it ends the Tunnel's reader.
		r.host.dev.TUN().Close()
	})
	return r
}

// run starts the Agent's Run in a goroutine of its own.
func (r *agentRig) run() {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.done)
		r.runErr = r.agent.Run(ctx)
	}()
}

// wait waits for Run to return and returns its error.
func (r *agentRig) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-r.done:
		return r.runErr
	case <-time.After(d):
		t.Fatalf("Run still running after %v", d)
		return nil
	}
}

func (r *agentRig) onEvent(t *testing.T, e AgentEvent) {
	if e.Kind == AgentUp && r.hold != nil {
		close(r.hold)
	}
	select {
	case r.events <- e:
	default:
		t.Errorf("event %s dropped: the test's queue is full", kindName(e.Kind))
	}
}

func (r *agentRig) dial(ctx context.Context, s AgentServer) (*quicio.ClientConn, error) {
	r.mu.Lock()
	r.dials[s.Addr]++
	r.mu.Unlock()
	if r.hold != nil && s != r.servers[0] {
		select {
		case <-r.hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	ctx, cancel := context.WithTimeout(ctx, agentDialTimeout)
	defer cancel()
	qc, err := quicio.Dial(ctx, quicio.DialConfig{Addr: s.Addr, TLSConfig: r.tls[s.Addr], ServerName: "localhost"})
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.conns = append(r.conns, qc)
	r.mu.Unlock()
	return qc, nil
}

func (r *agentRig) connect(ctx context.Context, qc *quicio.ClientConn, s AgentServer) (*Client, error) {
	r.mu.Lock()
	r.connects[s.Addr]++
	r.mu.Unlock()
	c, err := Connect(ctx, ClientConfig{Conn: qc.Conn, Authority: s.Authority, Token: r.token, SetupTimeout: 3 * time.Second, Logger: r.clog})
	if err == nil && r.onUp != nil {
		r.onUp(s)
	}
	return c, err
}

// counts returns how often the Agent dialed addr and how often it opened
// a session on a connection to addr.
func (r *agentRig) counts(addr string) (dials, connects int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dials[addr], r.connects[addr]
}

// dialed returns every connection the Agent's dials opened.
func (r *agentRig) dialed() []*quicio.ClientConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*quicio.ClientConn(nil), r.conns...)
}

// waitEvent waits for the next event of kind and returns it and the
// events before it.
func (r *agentRig) waitEvent(t *testing.T, kind AgentEventKind) (AgentEvent, []AgentEvent) {
	t.Helper()
	timeout := time.After(agentWait)
	var before []AgentEvent
	for {
		select {
		case e := <-r.events:
			if e.Kind == kind {
				return e, before
			}
			before = append(before, e)
		case <-timeout:
			t.Fatalf("no %s event within %v; got %s", kindName(kind), agentWait, kindNames(before))
			return AgentEvent{}, nil
		}
	}
}

// drainEvents returns the events queued now.
func (r *agentRig) drainEvents() []AgentEvent {
	var es []AgentEvent
	for {
		select {
		case e := <-r.events:
			es = append(es, e)
		default:
			return es
		}
	}
}

func kindName(k AgentEventKind) string {
	switch k {
	case AgentUp:
		return "AgentUp"
	case AgentLost:
		return "AgentLost"
	case AgentBack:
		return "AgentBack"
	case AgentMoved:
		return "AgentMoved"
	case AgentFailing:
		return "AgentFailing"
	}
	return fmt.Sprintf("AgentEventKind(%d)", int(k))
}

func kindsOf(es []AgentEvent) []AgentEventKind {
	ks := make([]AgentEventKind, len(es))
	for i, e := range es {
		ks[i] = e.Kind
	}
	return ks
}

func kindNames(es []AgentEvent) string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = kindName(e.Kind)
		if e.Err != nil {
			s[i] += fmt.Sprintf("(%v)", e.Err)
		}
	}
	return "[" + strings.Join(s, " ") + "]"
}

// attrLog is a slog.Handler that keeps the attributes of the last record
// with message msg and passes every record on.
type attrLog struct {
	slog.Handler
	msg string

	mu   sync.Mutex // guards last
	last map[string]slog.Value
}

func (h *attrLog) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		m := make(map[string]slog.Value)
		r.Attrs(func(a slog.Attr) bool {
			m[a.Key] = a.Value
			return true
		})
		h.mu.Lock()
		h.last = m
		h.mu.Unlock()
	}
	return h.Handler.Handle(ctx, r)
}

// The Agent logs without attributes or groups of its own.
func (h *attrLog) WithAttrs([]slog.Attr) slog.Handler { panic("attrLog: WithAttrs") }
func (h *attrLog) WithGroup(string) slog.Handler      { panic("attrLog: WithGroup") }

// attr returns attribute key of the last record with h's message.
func (h *attrLog) attr(key string) (slog.Value, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v, ok := h.last[key]
	return v, ok
}

// serving waits until the Agent serves the session c: the Agent reports
// a session just before it serves it, and until then what the host's TUN
// sends is dropped. It sends a packet the server refuses, to loopback,
// until the server's ICMP error comes back: unlike a packet the server
// takes, a probe sent twice never reaches the server's TUN, whose writer
// would wait for a reader.
func (r *agentRig) serving(t *testing.T, c *Client) {
	t.Helper()
	probe := udp4(addrOf(t, c, true), netip.MustParseAddr("127.0.0.1"), 1000, 9, []byte("probe"))
	deadline := time.After(agentWait)
	for {
		send(t, r.host.dev.Outbound, probe)
		select {
		case p := <-r.host.dev.Inbound:
			if mustHeader(t, p).proto == protoICMP {
				return
			}
			t.Fatalf("host's TUN got %x, want an ICMP error", p)
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("the Agent did not serve the session within %v: no ICMP error for a probe", agentWait)
		}
	}
}

// passes checks that the host's TUN and ts's carry a packet each way for
// the session c, from and to c's IPv4 address.
func (r *agentRig) passes(t *testing.T, ts *testServer, c *Client) {
	t.Helper()
	r.serving(t, c)
	a4, target := addrOf(t, c, true), netip.MustParseAddr("198.18.2.2")
	send(t, r.host.dev.Outbound, udp4(a4, target, 1000, 53, []byte("agent up")))
	got := recv(t, ts.dev.Inbound, "the host's packet at the server's TUN")
	if h := mustHeader(t, got); h.src != a4 || h.dst != target || !bytes.HasSuffix(got, []byte("agent up")) {
		t.Fatalf("server's TUN got %x, want a packet from %s to %s", got, a4, target)
	}
	down := udp4(target, a4, 53, 1000, []byte("agent down"))
	send(t, ts.dev.Outbound, down)
	for {
		// The errors for probes that crossed are skipped.
		back := recv(t, r.host.dev.Inbound, "the reply at the host's TUN")
		if mustHeader(t, back).proto == protoICMP {
			continue
		}
		if !bytes.Equal(back, down) {
			t.Fatalf("host's TUN got %x, want %x", back, down)
		}
		return
	}
}

// startPoolServer is startServer with the IPv4 pool pool4 (the IPv6 pool
// is every test server's).
func startPoolServer(t *testing.T, pool4 string) *testServer {
	t.Helper()
	p4, err := policy.NewPool(netip.MustParsePrefix(pool4), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return startServerWith(t, func(c *policy.DestinationsConfig) {
		c.ServerAddrs = append(c.ServerAddrs, p4.Gateway())
		c.ClientPrefixes = append(c.ClientPrefixes, p4.Prefix())
	}, func(c *ServerConfig) { c.Pool4 = p4 })
}

// deadServer is a server address where nothing listens: a UDP port that
// was just closed. It is on 127.0.0.2 so that a dial to it that times out
// makes quicio remember no real server's path as small.
func deadServer(t *testing.T) *testServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return &testServer{addr: addr, tls: &tls.Config{NextProtos: []string{http3.NextProtoH3}}}
}

// leaseIn returns the IPv4 address of lease, failing t unless it is in p.
func leaseIn(t *testing.T, what string, lease []netip.Prefix, p string) netip.Addr {
	t.Helper()
	for _, l := range lease {
		if l.Addr().Is4() {
			if !netip.MustParsePrefix(p).Contains(l.Addr()) {
				t.Errorf("%s lease %v: IPv4 address outside %s", what, lease, p)
			}
			return l.Addr()
		}
	}
	t.Errorf("%s lease %v has no IPv4 address", what, lease)
	return netip.Addr{}
}

// TestAgentStartRacesServers: at start the Agent dials every server at
// once and comes up on the first that answers, here the second, without
// waiting for the first, where nothing listens; the host is set up once.
func TestAgentStartRacesServers(t *testing.T) {
	checkLeaks(t)
	dead, ts := deadServer(t), startServer(t)
	r := newAgentRig(t, agentOpts{reconnect: true}, dead, ts)
	start := time.Now()
	r.run()
	up, before := r.waitEvent(t, AgentUp)
	if took := time.Since(start); took >= agentDialTimeout {
		t.Errorf("up after %v: waited for the dead server's dial (%v)", took, agentDialTimeout)
	}
	if len(before) != 0 {
		t.Errorf("events before AgentUp: %s, want none", kindNames(before))
	}
	if up.Server != r.servers[1] || up.Failover {
		t.Errorf("AgentUp on %+v (failover %v), want on %+v", up.Server, up.Failover, r.servers[1])
	}
	r.passes(t, ts, up.Client)
	if ups, _ := r.host.calls(); len(ups) != 1 || ups[0] != r.servers[1] {
		t.Errorf("Host.Up calls: %+v, want one, for %+v", ups, r.servers[1])
	}
	for _, ts := range []*testServer{dead, ts} {
		if d, _ := r.counts(ts.addr); d != 1 {
			t.Errorf("dials to %s = %d, want 1", ts.addr, d)
		}
	}
	if _, c := r.counts(dead.addr); c != 0 {
		t.Errorf("sessions opened on %s = %d, want 0", dead.addr, c)
	}
}

// TestAgentFailsOverOnLoss: when its server is gone, the Agent reconnects
// to the next one, whose pool is another: it reports the loss, then the
// tunnel back on another server, and the host follows the new addresses,
// which carry the packets.
func TestAgentFailsOverOnLoss(t *testing.T) {
	checkLeaks(t)
	first, second := startPoolServer(t, "100.64.0.0/24"), startPoolServer(t, "100.70.0.0/24")
	r := newAgentRig(t, agentOpts{reconnect: true, holdOthers: true}, first, second)
	r.run()
	up, _ := r.waitEvent(t, AgentUp)
	if up.Server != r.servers[0] {
		t.Fatalf("AgentUp on %+v, want the first server %+v", up.Server, r.servers[0])
	}
	r.passes(t, first, up.Client)

	first.qs.Close() // hard: the connection is closed, no GOAWAY
	back, before := r.waitEvent(t, AgentBack)
	if got := kindsOf(before); !slices.Equal(got, []AgentEventKind{AgentLost, AgentMoved}) || before[0].Server != r.servers[0] {
		t.Errorf("events before AgentBack: %s, want AgentLost on the first server, then AgentMoved", kindNames(before))
	}
	if back.Server != r.servers[1] || !back.Failover {
		t.Errorf("AgentBack on %+v (failover %v), want on the second server %+v, failover", back.Server, back.Failover, r.servers[1])
	}
	_, moves := r.host.calls()
	if len(moves) != 1 {
		t.Fatalf("Host.Move calls: %+v, want one", moves)
	}
	if moves[0].server != r.servers[1] {
		t.Errorf("Host.Move to %+v, want the second server %+v", moves[0].server, r.servers[1])
	}
	leaseIn(t, "old", moves[0].from, "100.64.0.0/24")
	to := leaseIn(t, "new", moves[0].to, "100.70.0.0/24")
	if got := addrOf(t, back.Client, true); got != to {
		t.Errorf("AgentBack's session has %s, want the lease the host moved to, %s", got, to)
	}
	r.passes(t, second, back.Client)
	if ups, _ := r.host.calls(); len(ups) != 1 {
		t.Errorf("Host.Up called %d times, want once", len(ups))
	}
	if d, _ := r.counts(first.addr); d != 1 {
		t.Errorf("dials to the lost server = %d, want 1 (the next server first)", d)
	}
}

// TestAgentMovesOnGoAwayBeforeBreak: when its server drains (GOAWAY), the
// Agent opens the next session, on the other server, while the old one
// still carries the tunnel, then ends the old one: no loss is reported,
// the server's drain ends before its deadline, and with the same lease
// the host is not moved.
func TestAgentMovesOnGoAwayBeforeBreak(t *testing.T) {
	checkLeaks(t)
	first, second := startServer(t), startServer(t)
	// When the second session is up, the first server still has its
	// session: make before break.
	oldUp := make(chan int, 1)
	r := newAgentRig(t, agentOpts{reconnect: true, holdOthers: true, connected: func(s AgentServer) {
		if s.Addr == second.addr {
			select {
			case oldUp <- first.srv.Sessions():
			default:
			}
		}
	}}, first, second)
	r.run()
	up, _ := r.waitEvent(t, AgentUp)
	if up.Server != r.servers[0] {
		t.Fatalf("AgentUp on %+v, want the first server %+v", up.Server, r.servers[0])
	}

	const drain = 4 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	shutdown := make(chan error, 1)
	go func() { shutdown <- first.srv.Shutdown(ctx) }()
	defer func() { <-shutdown }()
	back, before := r.waitEvent(t, AgentBack)
	for _, e := range before {
		if e.Kind == AgentLost || e.Kind == AgentMoved {
			t.Errorf("events before AgentBack: %s, want neither AgentLost nor AgentMoved", kindNames(before))
			break
		}
	}
	if back.Server != r.servers[1] || !back.Failover {
		t.Errorf("AgentBack on %+v (failover %v), want on the second server %+v, failover", back.Server, back.Failover, r.servers[1])
	}
	select {
	case n := <-oldUp:
		if n != 1 {
			t.Errorf("sessions on the draining server when the new one was up = %d, want 1 (make before break)", n)
		}
	default:
		t.Errorf("AgentBack before the session on the second server was up")
	}
	if _, n := r.logs.counts("tunnel moved to a new session before the server ended the old one"); n != 1 {
		t.Errorf("the Agent did not log that the new session was up before the old one ended")
	}
	select {
	case err := <-shutdown:
		shutdown <- err
		if err != nil {
			t.Errorf("first server's Shutdown = %v, want nil: the Agent ends its old session once the new one is up", err)
		}
	case <-time.After(agentWait):
		t.Errorf("first server still draining %v after the Agent moved", agentWait)
	}
	r.passes(t, second, back.Client)
	if _, moves := r.host.calls(); len(moves) != 0 {
		t.Errorf("Host.Move calls: %+v, want none (the new session has the same lease)", moves)
	}
	if es := r.drainEvents(); len(es) != 0 {
		t.Errorf("events after AgentBack: %s, want none", kindNames(es))
	}
}

// TestAgentCarriesThroughGoAway: while the Agent moves to a new session
// on GOAWAY, the old one carries the tunnel until the new one can: of a
// packet a millisecond from the host's TUN, hardly any is dropped for want
// of a session (the Tunnel's count, which the Agent logs).
func TestAgentCarriesThroughGoAway(t *testing.T) {
	checkLeaks(t)
	first, second := startServer(t), startServer(t)
	r := newAgentRig(t, agentOpts{reconnect: true, holdOthers: true}, first, second)
	r.run()
	up, _ := r.waitEvent(t, AgentUp)
	r.serving(t, up.Client)

	// Packets to loopback, which the server answers with ICMP errors
	// to the host: none waits at a server's TUN for a reader.
	probe := udp4(addrOf(t, up.Client, true), netip.MustParseAddr("127.0.0.1"), 1000, 9, []byte("probe"))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(stop); wg.Wait() }()
	wg.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			select {
			case r.host.dev.Outbound <- probe:
			case <-stop:
				return
			}
		}
	})
	wg.Go(func() {
		for {
			select {
			case <-r.host.dev.Inbound:
			case <-stop:
				return
			}
		}
	})
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	shutdown := make(chan error, 1)
	go func() { shutdown <- first.srv.Shutdown(ctx) }()
	defer func() { <-shutdown }()
	back, _ := r.waitEvent(t, AgentBack)
	if back.Server != r.servers[1] {
		t.Fatalf("AgentBack on %+v, want the second server %+v", back.Server, r.servers[1])
	}
	// The Agent logs "tunnel back" just after the event.
	var v slog.Value
	waitFor(t, `the Agent's "tunnel back" record`, agentWait, func() bool {
		var ok bool
		v, ok = r.back.attr("dropped_while_down")
		return ok
	})
	after, _ := r.back.attr("after")
	t.Logf("moved in %v, %d packets dropped", after, v.Uint64())
	// What may be read between the old Serve's end and the new one's.
	const maxDropped = 10
	if v.Uint64() > maxDropped {
		t.Errorf("%d packets dropped while the Agent moved to a new session, want at most %d: the old session could carry them", v.Uint64(), maxDropped)
	}
}

// TestAgentForcedOnRefusedToken: a server that refuses the credentials
// ends the run with a *ForcedError at once, on the first session or on a
// later one: no retry can help.
func TestAgentForcedOnRefusedToken(t *testing.T) {
	t.Run("start", func(t *testing.T) {
		checkLeaks(t)
		ts := startServer(t)
		r := newAgentRig(t, agentOpts{reconnect: true, token: "not-the-right-token-at-all"}, ts)
		start := time.Now()
		r.run()
		err := r.wait(t, agentWait)
		wantForced401(t, err)
		if took := time.Since(start); took > time.Second {
			t.Errorf("Run returned after %v, want at once", took)
		}
		if d, c := r.counts(ts.addr); d != 1 || c != 1 {
			t.Errorf("dials %d, sessions opened %d; want 1 and 1 (no retry)", d, c)
		}
		if ups, _ := r.host.calls(); len(ups) != 0 {
			t.Errorf("Host.Up calls: %+v, want none", ups)
		}
		if es := r.drainEvents(); len(es) != 0 {
			t.Errorf("events: %s, want none", kindNames(es))
		}
	})
	t.Run("after a loss", func(t *testing.T) {
		checkLeaks(t)
		first := startServer(t)
		toks, err := policy.ParseTokens(strings.NewReader("carol fedcba9876543210-other-token\n"))
		if err != nil {
			t.Fatal(err)
		}
		refusing := startServer(t, func(c *ServerConfig) { c.Auth = &policy.Authenticator{Tokens: toks} })
		r := newAgentRig(t, agentOpts{reconnect: true, holdOthers: true}, first, refusing)
		r.run()
		if up, _ := r.waitEvent(t, AgentUp); up.Server != r.servers[0] {
			t.Fatalf("AgentUp on %+v, want the first server %+v", up.Server, r.servers[0])
		}
		first.qs.Close()
		err = r.wait(t, agentWait)
		wantForced401(t, err)
		if _, c := r.counts(refusing.addr); c != 1 {
			t.Errorf("sessions opened on the refusing server = %d, want 1 (no retry)", c)
		}
		if _, c := r.counts(first.addr); c != 1 {
			t.Errorf("sessions opened on the lost server = %d, want 1 (no retry after the refusal)", c)
		}
		for _, e := range r.drainEvents() {
			if e.Kind == AgentBack || e.Kind == AgentFailing {
				t.Errorf("event %s after the refusal, want none", kindName(e.Kind))
			}
		}
	})
}

func wantForced401(t *testing.T, err error) {
	t.Helper()
	if _, ok := errors.AsType[*ForcedError](err); !ok {
		t.Fatalf("Run = %v (%T), want a *ForcedError", err, err)
	}
	if re, ok := errors.AsType[*RefusedError](err); !ok || re.Status != 401 {
		t.Errorf("Run = %v, want it to wrap a RefusedError with status 401", err)
	}
}

// TestAgentNoReconnect: without Reconnect, a lost session ends the run
// with the loss, which retrying could help: no *ForcedError.
func TestAgentNoReconnect(t *testing.T) {
	checkLeaks(t)
	ts := startServer(t)
	r := newAgentRig(t, agentOpts{}, ts)
	r.run()
	up, _ := r.waitEvent(t, AgentUp)
	r.passes(t, ts, up.Client)
	ts.qs.Close()
	err := r.wait(t, agentWait)
	if err == nil || !strings.Contains(err.Error(), "tunnel down") || !errors.Is(err, ErrSessionClosed) {
		t.Errorf("Run = %v, want a tunnel down error wrapping ErrSessionClosed", err)
	}
	if _, ok := errors.AsType[*ForcedError](err); ok {
		t.Errorf("Run = %v, a *ForcedError; want a plain error", err)
	}
	if d, _ := r.counts(ts.addr); d != 1 {
		t.Errorf("dials = %d, want 1 (no reconnect)", d)
	}
	if es := r.drainEvents(); len(es) != 0 {
		t.Errorf("events after AgentUp: %s, want none", kindNames(es))
	}
}

// TestAgentStopsOnCancel: cancelling Run's context ends it at once with
// nil; every connection it opened is closed, the server's session ends,
// and none of its goroutines is left once the host closes the TUN.
func TestAgentStopsOnCancel(t *testing.T) {
	checkLeaks(t)
	dead, ts := deadServer(t), startServer(t)
	r := newAgentRig(t, agentOpts{reconnect: true}, ts, dead)
	r.run()
	up, _ := r.waitEvent(t, AgentUp)
	r.passes(t, ts, up.Client)
	start := time.Now()
	r.cancel()
	if err := r.wait(t, 2*time.Second); err != nil {
		t.Errorf("Run after cancel = %v, want nil", err)
	}
	t.Logf("Run returned %v after cancel", time.Since(start).Round(time.Millisecond))
	conns := r.dialed()
	if len(conns) != 1 {
		t.Errorf("%d connections dialed, want 1", len(conns))
	}
	for _, qc := range conns {
		select {
		case <-qc.Context().Done():
		case <-time.After(time.Second):
			t.Errorf("connection to %s still open after Run returned", qc.RemoteAddr())
		}
	}
	waitSessions(t, ts.srv, 0)
	if es := r.drainEvents(); len(es) != 0 {
		t.Errorf("events after AgentUp: %s, want none", kindNames(es))
	}
}

// TestAgentForcedWhenHostCannotMove: when the host cannot follow a new
// session's addresses, the run ends with a *ForcedError (the kill switch
// stays), and the new session is closed.
func TestAgentForcedWhenHostCannotMove(t *testing.T) {
	checkLeaks(t)
	first, second := startPoolServer(t, "100.64.0.0/24"), startPoolServer(t, "100.70.0.0/24")
	errMove := errors.New("set the TUN's addresses: no such device")
	r := newAgentRig(t, agentOpts{reconnect: true, holdOthers: true, moveErr: errMove}, first, second)
	r.run()
	if up, _ := r.waitEvent(t, AgentUp); up.Server != r.servers[0] {
		t.Fatalf("AgentUp on %+v, want the first server %+v", up.Server, r.servers[0])
	}
	first.qs.Close()
	err := r.wait(t, agentWait)
	if _, ok := errors.AsType[*ForcedError](err); !ok || !errors.Is(err, errMove) || !strings.Contains(err.Error(), "follow the new addresses") {
		t.Fatalf("Run = %v, want a *ForcedError to follow the new addresses, wrapping the host's error", err)
	}
	if _, moves := r.host.calls(); len(moves) != 1 {
		t.Errorf("Host.Move calls: %+v, want one", moves)
	}
	waitSessions(t, second.srv, 0)
	for _, e := range r.drainEvents() {
		if e.Kind == AgentBack || e.Kind == AgentMoved {
			t.Errorf("event %s after the host failed to move, want none", kindName(e.Kind))
		}
	}
}
