package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/masque-vpn/masque/quicio"
)

// AgentServer is one of a profile's servers (the same operator's).
type AgentServer struct {
	// Addr is where to dial, HOST:PORT.
	Addr string
	// Authority and Template go into the session's ClientConfig.
	Authority, Template string
}

// Host is the host side of a client tunnel, which the Agent drives; the
// masque command implements it with package tun (TUN, policy routing,
// kill switch, DNS, crash-recovery state).
type Host interface {
	// Up sets the host up for the first session, c on server s: the TUN
	// with c's addresses, the routes, the kill switch. It returns the
	// device whose packets the tunnel carries.
	Up(ctx context.Context, s AgentServer, c *Client) (Device, error)
	// Move moves the host from old's addresses and routes to c's (on
	// server s): a new session (another server, or the same after its
	// lease ran out) assigned others. The TUN and the kill switch stay, so
	// nothing leaks meanwhile; an error ends the run closed.
	Move(s AgentServer, old, c *Client) error
	// InnerMTU is the largest inner packet the host's TUN takes.
	InnerMTU() int
}

// AgentEventKind says what happened to the tunnel.
type AgentEventKind int

const (
	AgentUp      AgentEventKind = iota // the first session is up and the host set up
	AgentLost                          // the session was lost; reconnecting
	AgentBack                          // a new session carries the tunnel
	AgentMoved                         // a new session assigned other addresses: the host followed
	AgentFailing                       // a reconnect attempt failed (Err, Attempt)
)

// AgentEvent is one thing the Agent reports (AgentConfig.OnEvent).
type AgentEvent struct {
	Kind    AgentEventKind
	Server  AgentServer // the session's, or the failed attempt's
	Client  *Client     // the session that carries the tunnel now
	Err     error
	Attempt int
	// Failover: the new session is on another server than the last one.
	Failover bool
}

// AgentConfig configures [NewAgent].
type AgentConfig struct {
	// Servers are tried in this order at start (raced, the first to
	// answer wins) and after a loss (the next one after the server that
	// was lost, round the list).
	Servers []AgentServer
	// Dial opens a QUIC connection to s (with the socket's mark, TLS and
	// timeouts the caller chose).
	Dial func(ctx context.Context, s AgentServer) (*quicio.ClientConn, error)
	// Connect opens a CONNECT-IP session to s on qc (with
	// ClientConfig.Authority and Template from s).
	Connect func(ctx context.Context, qc *quicio.ClientConn, s AgentServer) (*Client, error)
	// Host is set up once the first session is, and follows every session.
	Host Host
	// Reconnect: a lost tunnel is re-established (false: Run returns).
	Reconnect bool
	// OnEvent, if set, hears of each change, from Run's goroutine or the
	// one that moves to a new session on GOAWAY; it must not block.
	OnEvent func(AgentEvent)
	Logger  *slog.Logger
}

// Agent owns a client tunnel's life: it connects to the first healthy
// server, has the host set up, carries packets, and when the session is
// lost or the server drains (GOAWAY) opens the next one, on the same
// server or the next, with a backoff that holds across sessions
// (reconnectBackoff), and has the host follow a new session's addresses.
type Agent struct {
	cfg AgentConfig
	log *slog.Logger
	bo  reconnectBackoff
}

// NewAgent returns an Agent for cfg.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if len(cfg.Servers) == 0 {
		return nil, errors.New("agent: no servers")
	}
	if cfg.Dial == nil || cfg.Connect == nil || cfg.Host == nil {
		return nil, errors.New("agent: Dial, Connect and Host are required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Agent{cfg: cfg, log: log}, nil
}

// agentSession is one connection and the CONNECT-IP session on it.
type agentSession struct {
	qc     *quicio.ClientConn
	client *Client
	server int // index into cfg.Servers
	up     time.Time
	// mtuReady: the connection was given its MTU wait (waitMTU) while the
	// session it replaces still carried the tunnel.
	mtuReady bool
}

func (s *agentSession) close() {
	s.client.Close()
	s.qc.Close()
}

// ForcedError ends a run that retrying cannot help: the server refused the
// credentials or an assignment the policy refuses, or the host could not
// follow new addresses. With the kill switch on, the caller should keep
// the host blocked, as after a crash.
type ForcedError struct{ Err error }

func (e *ForcedError) Error() string { return e.Err.Error() }
func (e *ForcedError) Unwrap() error { return e.Err }

// RefusedCredentials reports whether the server refused the tunnel for
// the credentials (401 or 403): retrying cannot help.
func RefusedCredentials(err error) bool {
	re, ok := errors.AsType[*RefusedError](err)
	return ok && (re.Status == 401 || re.Status == 403)
}

// final reports whether a failed session attempt should end the run.
func final(err error) bool { return RefusedCredentials(err) || errors.Is(err, ErrAssignmentRefused) }

// Run connects, sets the host up and carries the tunnel until ctx is done
// (it returns nil) or the tunnel is down for good (it returns why; a
// *ForcedError when retrying cannot help). Every error before the first
// session is up is returned as is.
func (a *Agent) Run(ctx context.Context) error {
	cur, err := a.start(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		if final(err) {
			return &ForcedError{err}
		}
		return err
	}
	defer func() { cur.close() }()
	dev, err := a.cfg.Host.Up(ctx, a.cfg.Servers[cur.server], cur.client)
	if err != nil {
		return err
	}
	a.event(AgentEvent{Kind: AgentUp, Server: a.cfg.Servers[cur.server], Client: cur.client})
	t := NewTunnel(dev)
	for {
		next, err := a.serve(ctx, t, cur)
		if ctx.Err() != nil {
			if next != nil {
				next.close()
			}
			a.log.Info("tunnel down")
			return nil
		}
		if err != nil {
			return err
		}
		lost := time.Now()
		old := cur
		cur = next
		if !slices.Equal(cur.client.Lease(), old.client.Lease()) {
			// Another server, or a lease that ran out: the host
			// follows the new addresses under the kill switch.
			if err := a.cfg.Host.Move(a.cfg.Servers[cur.server], old.client, cur.client); err != nil {
				return &ForcedError{fmt.Errorf("follow the new addresses %s: %w", joinPrefixes(cur.client.Lease()), err)}
			}
			a.log.Info("tunnel moved to new addresses", "from", joinPrefixes(old.client.Lease()), "to", joinPrefixes(cur.client.Lease()))
			a.event(AgentEvent{Kind: AgentMoved, Server: a.cfg.Servers[cur.server], Client: cur.client})
		}
		if !cur.mtuReady {
			a.waitMTU(ctx, cur)
		}
		a.event(AgentEvent{Kind: AgentBack, Server: a.cfg.Servers[cur.server], Client: cur.client, Failover: cur.server != old.server})
		a.log.Info("tunnel back", "server", a.cfg.Servers[cur.server].Addr, "after", time.Since(lost).Round(time.Millisecond).String(),
			"failover", cur.server != old.server, "dropped_while_down", t.Dropped())
	}
}

// mtuWait bounds how long a new session waits for its MTU (waitMTU).
const mtuWait = 2 * time.Second

// waitMTU waits, at most mtuWait, until s carries packets of the host's
// inner MTU. A connection that starts small (its path shrank), or at
// quicio's initial packet size, grows with path MTU discovery; until it
// carries what the TUN lets in, large packets would get Packet Too Big,
// which hosts remember for minutes.
func (a *Agent) waitMTU(ctx context.Context, s *agentSession) {
	s.client.WaitMTU(ctx, a.cfg.Host.InnerMTU(), mtuWait)
}

// errMoved ends a session that a new one has replaced.
var errMoved = errors.New("moved to a new session")

// serve carries cur until it ends and returns the session that replaces
// it: opened while cur still ran when the server sent GOAWAY (make before
// break), else after cur was lost. It returns an error when the tunnel is
// down for good; cur is closed unless ctx is done.
func (a *Agent) serve(ctx context.Context, t *Tunnel, cur *agentSession) (*agentSession, error) {
	serveCtx, stopServe := context.WithCancelCause(ctx)
	moved := make(chan moveResult, 1)
	go func() {
		if !a.cfg.Reconnect {
			moved <- moveResult{skipped: true}
			return
		}
		moved <- a.moveOnGoAway(ctx, serveCtx, cur, func() { stopServe(errMoved) })
	}()
	runErr := t.Serve(serveCtx, cur.client)
	movedOn := errors.Is(context.Cause(serveCtx), errMoved)
	stopServe(nil)
	var mv moveResult
	select {
	case mv = <-moved:
	default:
		if ctx.Err() == nil && !movedOn {
			select {
			case <-cur.client.GoingAway():
				// The server ended the session (its drain deadline)
				// before the new one was up.
				a.log.Warn("tunnel lost while moving to a new session", "err", runErr)
				a.event(AgentEvent{Kind: AgentLost, Server: a.cfg.Servers[cur.server], Err: runErr})
			default:
			}
		}
		mv = <-moved
	}
	if ctx.Err() != nil {
		return mv.next, nil
	}
	switch {
	case !mv.skipped && mv.err == nil:
		cur.close()
		if mv.beforeLoss {
			a.log.Info("tunnel moved to a new session before the server ended the old one")
		}
		return mv.next, nil
	case !mv.skipped:
		// The move failed for good (credentials, a refused assignment).
		cur.close()
		return nil, &ForcedError{fmt.Errorf("tunnel down: %w", mv.err)}
	case !a.cfg.Reconnect:
		return nil, fmt.Errorf("tunnel down: %w", runErr)
	}
	a.log.Warn("tunnel lost, reconnecting", "err", runErr)
	a.event(AgentEvent{Kind: AgentLost, Server: a.cfg.Servers[cur.server], Err: runErr})
	cur.close()
	a.bo.ended(cur.up)
	next, err := a.reconnect(ctx, a.nextAfterLoss(cur.server))
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil
		}
		return nil, &ForcedError{fmt.Errorf("tunnel down: %w", err)}
	}
	return next, nil
}

// nextAfterLoss is the server to try first after server i was lost: the
// next one, so that a server that went away is not waited for.
func (a *Agent) nextAfterLoss(i int) int { return (i + 1) % len(a.cfg.Servers) }

// moveResult is what moveOnGoAway did.
type moveResult struct {
	skipped    bool // no GOAWAY before the session ended
	next       *agentSession
	err        error
	beforeLoss bool // the new session was up while the old one still was
}

// moveOnGoAway waits for the server's GOAWAY on cur while serveCtx
// lasts; then it opens a new session (reconnect, until ctx is done), on
// the next server if there are several, and ends the old one by calling
// stop once the new one is up and has waited for its MTU (make before
// break). Without a GOAWAY it reports skipped.
func (a *Agent) moveOnGoAway(ctx, serveCtx context.Context, cur *agentSession, stop func()) moveResult {
	select {
	case <-cur.client.GoingAway():
	case <-serveCtx.Done():
		select {
		case <-cur.client.GoingAway():
			// Both at once: the session ended after a GOAWAY.
		default:
			return moveResult{skipped: true}
		}
	}
	a.log.Info("server is draining (GOAWAY): opening a new session while this one lasts")
	a.bo.ended(cur.up)
	next, err := a.reconnect(ctx, a.nextAfterLoss(cur.server))
	if err != nil {
		return moveResult{err: err}
	}
	// The old session carries the tunnel while the new one waits for its
	// MTU: what the TUN reads between the two is dropped.
	a.waitMTU(serveCtx, next)
	before := serveCtx.Err() == nil
	next.mtuReady = before
	stop()
	return moveResult{next: next, beforeLoss: before}
}

// reconnect opens sessions, from server first round the list, until one
// is up or ctx is done. It gives up at once when a server refuses the
// credentials or assigns what the policy refuses.
func (a *Agent) reconnect(ctx context.Context, first int) (*agentSession, error) {
	n := len(a.cfg.Servers)
	for attempt := 1; ; attempt++ {
		if err := a.bo.wait(ctx); err != nil {
			return nil, err
		}
		i := (first + attempt - 1) % n
		s, err := a.open(ctx, i)
		if err == nil {
			return s, nil
		}
		if final(err) {
			return nil, err
		}
		a.bo.failed()
		a.log.Info("reconnect failed", "attempt", attempt, "server", a.cfg.Servers[i].Addr, "err", err)
		a.event(AgentEvent{Kind: AgentFailing, Server: a.cfg.Servers[i], Err: err, Attempt: attempt})
	}
}

// open dials server i and opens a session on the connection.
func (a *Agent) open(ctx context.Context, i int) (*agentSession, error) {
	qc, err := a.cfg.Dial(ctx, a.cfg.Servers[i])
	if err != nil {
		return nil, err
	}
	return a.connect(ctx, qc, i)
}

func (a *Agent) connect(ctx context.Context, qc *quicio.ClientConn, i int) (*agentSession, error) {
	c, err := a.cfg.Connect(ctx, qc, a.cfg.Servers[i])
	if err != nil {
		qc.Close()
		return nil, err
	}
	return &agentSession{qc: qc, client: c, server: i, up: time.Now()}, nil
}

// start opens the first session: it dials every server at once and opens
// the session on the first connection up (the lowest RTT, in effect),
// then on the others as they come, until one session is up. It returns
// the first server's error if none is, or the first final one.
func (a *Agent) start(ctx context.Context) (*agentSession, error) {
	if len(a.cfg.Servers) == 1 {
		return a.open(ctx, 0)
	}
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type dialed struct {
		i   int
		qc  *quicio.ClientConn
		err error
	}
	ch := make(chan dialed, len(a.cfg.Servers))
	var wg sync.WaitGroup
	for i, s := range a.cfg.Servers {
		wg.Go(func() {
			qc, err := a.cfg.Dial(dctx, s)
			ch <- dialed{i, qc, err}
		})
	}
	// Connections that were not used are closed once every dial is back.
	var won *agentSession
	defer func() {
		cancel()
		go func() {
			wg.Wait()
			close(ch)
			for d := range ch {
				if d.qc != nil && (won == nil || d.qc != won.qc) {
					d.qc.Close()
				}
			}
		}()
	}()
	errs := make([]error, len(a.cfg.Servers))
	for range a.cfg.Servers {
		var d dialed
		select {
		case d = <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if d.err == nil {
			s, err := a.connect(ctx, d.qc, d.i)
			if err == nil {
				won = s
				if d.i != 0 {
					a.log.Info("first server to answer", "server", a.cfg.Servers[d.i].Addr, "rtt", s.client.Stats().RTT.String())
				}
				return s, nil
			}
			d.err = err
			if final(err) {
				return nil, err
			}
		}
		errs[d.i] = d.err
		a.log.Info("server unavailable", "server", a.cfg.Servers[d.i].Addr, "err", d.err)
	}
	var lines []string
	for i, err := range errs {
		lines = append(lines, fmt.Sprintf("%s: %v", a.cfg.Servers[i].Addr, err))
	}
	return nil, fmt.Errorf("no server answered: %s", strings.Join(lines, "; "))
}

func (a *Agent) event(e AgentEvent) {
	if a.cfg.OnEvent != nil {
		a.cfg.OnEvent(e)
	}
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
