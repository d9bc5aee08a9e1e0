package tunnel

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dunglas/httpsfv"
	"github.com/masque-vpn/masque/policy"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// Defaults of [UDPConfig].
const (
	// DefaultUDPIdleTimeout closes a flow after this long without a
	// datagram in either direction. RFC 9298 §3.1 (after RFC 4787 REQ-5):
	// not less than two minutes.
	DefaultUDPIdleTimeout = 2 * time.Minute
	// DefaultUDPResolveTimeout bounds the resolution of a target name.
	DefaultUDPResolveTimeout = 5 * time.Second
	// DefaultUDPMaxFlowsPerConn caps flows on one QUIC connection; the
	// connection's stream limit follows it (Server.QUICConfig).
	DefaultUDPMaxFlowsPerConn = 64
	// DefaultUDPMaxFlowsPerIdentity caps the flows of one identity over
	// all its connections.
	DefaultUDPMaxFlowsPerIdentity = 256
)

// UDPConfig configures the CONNECT-UDP part (RFC 9298) of a [Server]. Its
// zero value is the documented defaults: every authenticated identity may
// reach whatever [ServerConfig.Destinations] allows.
type UDPConfig struct {
	// Rules restricts identities to allow-lists of targets and decides
	// whether requests without credentials are served; nil restricts
	// nobody and refuses anonymous requests.
	Rules *policy.UDPRules
	// IdleTimeout closes a flow after that long without a datagram in
	// either direction (DefaultUDPIdleTimeout).
	IdleTimeout time.Duration
	// ResolveTimeout bounds the resolution of a target name
	// (DefaultUDPResolveTimeout).
	ResolveTimeout time.Duration
	// MaxFlowsPerConn caps flows per QUIC connection
	// (DefaultUDPMaxFlowsPerConn).
	MaxFlowsPerConn int
	// MaxFlowsPerIdentity caps one identity's flows over all its
	// connections (DefaultUDPMaxFlowsPerIdentity). Anonymous requests
	// count as one identity.
	MaxFlowsPerIdentity int
	// Lookup resolves a target name to addresses; nil uses Go's own
	// resolver (/etc/resolv.conf, /etc/hosts). It must honour ctx.
	Lookup func(ctx context.Context, host string) ([]netip.Addr, error)
}

// validate reports every problem of c.
func (c *UDPConfig) validate() []error {
	var errs []error
	if c.IdleTimeout < 0 {
		errs = append(errs, errors.New("udp.idle_timeout: negative"))
	}
	if c.ResolveTimeout < 0 {
		errs = append(errs, errors.New("udp.resolve_timeout: negative"))
	}
	if c.MaxFlowsPerConn < 0 {
		errs = append(errs, errors.New("udp.max_flows_per_conn: negative"))
	}
	if c.MaxFlowsPerIdentity < 0 {
		errs = append(errs, errors.New("udp.max_flows_per_identity: negative"))
	}
	return errs
}

func (c *UDPConfig) populate() {
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultUDPIdleTimeout
	}
	if c.ResolveTimeout == 0 {
		c.ResolveTimeout = DefaultUDPResolveTimeout
	}
	if c.MaxFlowsPerConn == 0 {
		c.MaxFlowsPerConn = DefaultUDPMaxFlowsPerConn
	}
	if c.MaxFlowsPerIdentity == 0 {
		c.MaxFlowsPerIdentity = DefaultUDPMaxFlowsPerIdentity
	}
	if c.Lookup == nil {
		r := &net.Resolver{PreferGo: true}
		c.Lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return r.LookupNetIP(ctx, "ip", host)
		}
	}
}

// anonymous is the identity that requests without credentials count as
// for limits; no real identity is empty.
const anonymous policy.Identity = ""

// udpProxy serves CONNECT-UDP requests: it checks each request, resolves
// and checks the target, opens a UDP socket of its own and runs a udpFlow
// on it. It is the CONNECT-UDP half of a Server.
//
// A request goes through, in order: the :authority (421 if it is not this
// server) → masque-go's ParseProxyRequest (method, :protocol,
// Capsule-Protocol, template variables) → authentication →
// validation of the target → flow limits → resolution (with a timeout) →
// the destination policy and the identity's allow-list on the resolved
// address → a connected UDP socket → the flow. Each refusal answers with a
// status and a Proxy-Status (RFC 9209) in refuse.
type udpProxy struct {
	// muxOf returns the datagram reader of a connection (set by NewServer).
	muxOf func(*quic.Conn) *dgramMux
	// authenticated notes a request of an identity (set by NewServer;
	// nil: nothing to note).
	authenticated func(*http.Request)
	cfg           UDPConfig
	auth          *policy.Authenticator
	dests         atomic.Pointer[policy.Destinations] // replaced by setPolicy
	rules         atomic.Pointer[policy.UDPRules]     // nil: no allow-lists, no anonymous access
	names         *serverNames                        // what a request's :authority may name
	log           *slog.Logger
	counters      *udpCounters
	nextID        atomic.Uint64

	mu      sync.Mutex // guards the fields below
	flows   map[*udpFlow]struct{}
	perConn map[*quic.Conn]int
	perID   map[policy.Identity]int
	closing bool
	running sync.WaitGroup // one per registered flow; Add only under mu while !closing
}

func newUDPProxy(cfg UDPConfig, auth *policy.Authenticator, dests *policy.Destinations, names *serverNames, log *slog.Logger, c *udpCounters) *udpProxy {
	cfg.populate()
	p := &udpProxy{
		cfg: cfg, auth: auth, names: names,
		log:      log.With("component", "connect-udp"),
		counters: c,
		flows:    make(map[*udpFlow]struct{}),
		perConn:  make(map[*quic.Conn]int),
		perID:    make(map[policy.Identity]int),
	}
	p.dests.Store(dests)
	p.rules.Store(cfg.Rules)
	return p
}

// setPolicy replaces the destination policy and the rules: new requests
// are decided by them, and open flows they would refuse now are closed.
// It returns how many flows it closed.
func (p *udpProxy) setPolicy(dests *policy.Destinations, rules *policy.UDPRules) int {
	p.dests.Store(dests)
	p.rules.Store(rules)
	p.mu.Lock()
	flows := make([]*udpFlow, 0, len(p.flows))
	for f := range p.flows {
		flows = append(flows, f)
	}
	p.mu.Unlock()
	closed := 0
	for _, f := range flows {
		if !p.allowed(dests, rules, f.identity, f.target, f.addr) {
			f.close(flowEndPolicy)
			closed++
		}
	}
	return closed
}

// allowed reports whether identity may have a flow to t at addr under
// dests and rules.
func (p *udpProxy) allowed(dests *policy.Destinations, rules *policy.UDPRules, id policy.Identity, t udpTarget, addr netip.Addr) bool {
	if dests.Check(addr).Denied() {
		return false
	}
	if id == anonymous {
		anon, ok := rules.Anonymous()
		return ok && anon.Allows(t.name, addr, t.port)
	}
	allow, restricted := rules.For(id)
	return !restricted || allow.Allows(t.name, addr, t.port)
}

// proxyStatus is the content of a Proxy-Status field (RFC 9209 §2).
type proxyStatus struct {
	err     string // error type, RFC 9209 §2.3 (a token)
	rcode   string // dns_error: the DNS response code
	nextHop string // the address the flow goes to
	details string // human-readable detail
}

// header returns the field value: "masque" with the parameters set.
func (ps proxyStatus) header() string {
	item := httpsfv.NewItem(httpsfv.Token("masque"))
	if ps.err != "" {
		item.Params.Add("error", httpsfv.Token(ps.err))
	}
	if ps.rcode != "" {
		item.Params.Add("rcode", sfString(ps.rcode))
	}
	if ps.nextHop != "" {
		item.Params.Add("next-hop", sfString(ps.nextHop))
	}
	if ps.details != "" {
		item.Params.Add("details", sfString(ps.details))
	}
	v, err := httpsfv.Marshal(item)
	if err != nil {
		return "masque"
	}
	return v
}

// sfString makes s a valid sf-string: printable ASCII only.
func sfString(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, s)
}

// refuse answers a request that does not become a flow. Mapping refusals to
// HTTP statuses and Proxy-Status errors happens here, at the call sites'
// one argument each, and nowhere else.
func (p *udpProxy) refuse(w http.ResponseWriter, why udpRefusal, status int, ps proxyStatus) {
	p.counters.refused[why].Add(1)
	if ps != (proxyStatus{}) {
		w.Header().Set("Proxy-Status", ps.header())
	}
	if ps.details != "" && status >= 400 {
		// A short reason for people reading the response.
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(status)
		fmt.Fprintln(w, ps.details)
		return
	}
	w.WriteHeader(status)
}

// serve handles one CONNECT-UDP request; for an accepted one it blocks for
// the flow's lifetime.
func (p *udpProxy) serve(w http.ResponseWriter, r *http.Request) {
	log := p.log.With("remote_addr", r.RemoteAddr)
	// The :authority first: masque-go would match a malformed one against
	// the template and answer 500.
	conn, _ := r.Context().Value(connKey{}).(*quic.Conn)
	if err := p.names.check(r.Host, localAddrOf(conn)); err != nil {
		why := udpRefuseBadRequest
		if errors.Is(err, errMisdirected) {
			why = udpRefuseMisdirected
		}
		log.Debug("bad udp request", "err", err, "authority", r.Host)
		p.refuse(w, why, requestStatus(err), proxyStatus{details: err.Error()})
		return
	}
	req, err := parseUDPProxyRequest(r)
	if err != nil {
		p.refuseBadRequest(w, log, err)
		return
	}

	var chains [][]*x509.Certificate
	if r.TLS != nil {
		chains = r.TLS.VerifiedChains
	}
	id, err := p.auth.Authenticate(r.Header.Values("Authorization"), chains)
	rules := p.rules.Load()
	allow, restricted := rules.For(id)
	if err != nil && requestStatus(err) == http.StatusBadRequest {
		p.refuseBadRequest(w, log, &udpRequestError{status: requestStatus(err), reason: err.Error()})
		return
	}
	if err != nil {
		// Requests without any credentials may be served to an operator's
		// anonymous allow-list; wrong credentials never are.
		anon, ok := rules.Anonymous()
		none := r.Header.Get("Authorization") == "" && len(chains) == 0
		if !ok || !none || !errors.Is(err, policy.ErrNoCredentials) {
			p.logRefused(r, log, slog.LevelInfo, "reason", "unauthenticated", "err", err)
			w.Header().Set("WWW-Authenticate", `Bearer realm="masque"`)
			p.refuse(w, udpRefuseAuth, requestStatus(err), proxyStatus{})
			return
		}
		id, allow, restricted = anonymous, anon, true
	} else if p.authenticated != nil {
		p.authenticated(r)
	}
	log = log.With("identity", identityAttr(id))

	target, err := validateUDPTarget(req)
	if err != nil {
		p.refuseBadRequest(w, log, err)
		return
	}
	log = log.With("target", target.String())
	// A name that no pattern can match is refused before any resolution.
	if restricted && target.name != "" && !allow.MayAllow(target.name, target.port) {
		p.refuseNotAllowed(w, r, log, id)
		return
	}

	if why, ok := p.acquire(conn, id); !ok {
		p.logRefused(r, log, slog.LevelInfo, "reason", why)
		status := http.StatusTooManyRequests
		if why == udpRefuseShuttingDown {
			status = http.StatusServiceUnavailable
		}
		p.refuse(w, why, status, proxyStatus{err: "connection_limit_reached", details: why.String()})
		return
	}
	defer p.release(conn, id)

	addr, why, ps, ok := p.resolve(r.Context(), target, allow, restricted)
	if !ok && why == udpRefuseNotAllowed {
		p.refuseNotAllowed(w, r, log, id)
		return
	}
	if !ok {
		p.logRefused(r, log, slog.LevelInfo, "reason", why, "details", ps.details)
		p.refuse(w, why, udpRefusalStatus(why), ps)
		return
	}
	next := netip.AddrPortFrom(addr, target.port)
	uc, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(next))
	if err != nil {
		p.logRefused(r, log, slog.LevelWarn, "reason", udpRefuseDial, "err", err)
		p.refuse(w, udpRefuseDial, http.StatusBadGateway, proxyStatus{err: "destination_ip_unroutable", nextHop: next.String()})
		return
	}
	// Room for the target's bursts while SendDatagram waits for the QUIC
	// connection; memory is used only while datagrams wait.
	uc.SetReadBuffer(udpSocketBuffer)

	f := newUDPFlow(p, uc, p.nextID.Add(1))
	f.identity, f.target, f.addr = id, target, addr
	if !p.register(f) {
		uc.Close()
		p.refuse(w, udpRefuseShuttingDown, http.StatusServiceUnavailable, proxyStatus{})
		return
	}
	defer p.unregister(f)

	// RFC 9298 §3.5: a 2xx response, and the capsule protocol (RFC 9297 §3.2).
	w.Header().Set(http3.CapsuleProtocolHeader, "?1")
	w.Header().Set("Proxy-Status", proxyStatus{nextHop: next.String()}.header())
	w.WriteHeader(http.StatusOK)
	f.str = streamOf(w) // flushes the response header
	f.log = log.With("flow_id", f.id, "next_hop", next.String())
	if mux := p.muxOf(conn); mux != nil {
		mux.register(f.str.StreamID(), f)
		defer func() {
			mux.forget(f.str.StreamID())
			f.dropQueued()
		}()
	}
	// Flows can be as short-lived and numerous as DNS queries: their
	// lifecycle is debug detail; the metrics count them.
	f.log.Debug("udp flow up")
	start := time.Now()
	why2 := f.run(r.Context())
	f.log.Debug("udp flow down", "reason", why2, "duration", time.Since(start).Round(time.Millisecond).String(),
		"datagrams_up", f.upDatagrams.Load(), "datagrams_down", f.downDatagrams.Load())
}

// refuseNotAllowed answers a target outside the identity's allow-list:
// 403 for an identity, 401 for an anonymous request (credentials may open
// more targets).
func (p *udpProxy) refuseNotAllowed(w http.ResponseWriter, r *http.Request, log *slog.Logger, id policy.Identity) {
	if id == anonymous {
		p.logRefused(r, log, slog.LevelInfo, "reason", "unauthenticated")
		w.Header().Set("WWW-Authenticate", `Bearer realm="masque"`)
		p.refuse(w, udpRefuseAuth, http.StatusUnauthorized, proxyStatus{})
		return
	}
	p.logRefused(r, log, slog.LevelInfo, "reason", udpRefuseNotAllowed)
	p.refuse(w, udpRefuseNotAllowed, http.StatusForbidden, proxyStatus{err: "http_request_denied", details: "target not allowed for this identity"})
}

func (p *udpProxy) refuseBadRequest(w http.ResponseWriter, log *slog.Logger, err error) {
	status, reason := http.StatusBadRequest, "bad request"
	if re, ok := errors.AsType[*udpRequestError](err); ok {
		status, reason = re.status, re.reason
	}
	log.Debug("bad udp request", "err", reason)
	p.refuse(w, udpRefuseBadRequest, status, proxyStatus{details: reason})
}

// resolve turns the target into the address to dial: the literal, or the
// first resolved address that the destination policy and the identity's
// allow-list accept. On refusal it returns the reason, the Proxy-Status
// and false.
func (p *udpProxy) resolve(ctx context.Context, t udpTarget, allow policy.UDPAllowList, restricted bool) (netip.Addr, udpRefusal, proxyStatus, bool) {
	addrs := []netip.Addr{t.addr}
	if t.name != "" {
		ctx, cancel := context.WithTimeout(ctx, p.cfg.ResolveTimeout)
		var err error
		addrs, err = p.cfg.Lookup(ctx, t.name)
		cancel()
		if err != nil || len(addrs) == 0 {
			why, ps := dnsRefusal(err)
			return netip.Addr{}, why, ps, false
		}
	}
	// Policy decides on what we would dial, never on the name (DESIGN.md
	// "Security invariants").
	var firstDenied policy.Reason
	dests := p.dests.Load()
	for _, a := range addrs {
		a = a.Unmap().WithZone("")
		if r := dests.Check(a); r.Denied() {
			if firstDenied == policy.ReasonNone {
				firstDenied = r
			}
			continue
		}
		if restricted && !allow.Allows(t.name, a, t.port) {
			continue
		}
		return a, 0, proxyStatus{}, true
	}
	if firstDenied == policy.ReasonNone {
		return netip.Addr{}, udpRefuseNotAllowed, proxyStatus{err: "http_request_denied", details: "target not allowed for this identity"}, false
	}
	p.counters.deny(firstDenied)
	return netip.Addr{}, udpRefuseDestination, proxyStatus{err: "destination_ip_prohibited", details: firstDenied.String()}, false
}

// dnsRefusal maps a resolution failure (or an empty answer, err nil) to
// RFC 9209 §2.3.1 dns_timeout or §2.3.2 dns_error with its rcode.
func dnsRefusal(err error) (udpRefusal, proxyStatus) {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &dnsErr) && dnsErr.IsTimeout:
		return udpRefuseDNSTimeout, proxyStatus{err: "dns_timeout"}
	case err == nil || errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return udpRefuseDNSError, proxyStatus{err: "dns_error", rcode: "NXDOMAIN"}
	default:
		// Resolvers turn other failures into SERVFAIL, as masque-go does.
		return udpRefuseDNSError, proxyStatus{err: "dns_error", rcode: "SERVFAIL"}
	}
}

// udpRefusalStatus is the HTTP status of a refusal after resolution
// (RFC 9209 §2.3 recommendations).
func udpRefusalStatus(r udpRefusal) int {
	switch r {
	case udpRefuseDNSTimeout:
		return http.StatusGatewayTimeout
	case udpRefuseDNSError, udpRefuseDial:
		return http.StatusBadGateway
	case udpRefuseDestination, udpRefuseNotAllowed:
		return http.StatusForbidden
	default:
		return http.StatusInternalServerError
	}
}

// acquire takes a flow slot of conn and id, or says which limit refuses.
func (p *udpProxy) acquire(conn *quic.Conn, id policy.Identity) (udpRefusal, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closing:
		return udpRefuseShuttingDown, false
	case conn != nil && p.perConn[conn] >= p.cfg.MaxFlowsPerConn:
		return udpRefuseConnLimit, false
	case p.perID[id] >= p.cfg.MaxFlowsPerIdentity:
		return udpRefuseIdentityLimit, false
	}
	if conn != nil {
		p.perConn[conn]++
	}
	p.perID[id]++
	return 0, true
}

func (p *udpProxy) release(conn *quic.Conn, id policy.Identity) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if conn != nil {
		if p.perConn[conn]--; p.perConn[conn] <= 0 {
			delete(p.perConn, conn)
		}
	}
	if p.perID[id]--; p.perID[id] <= 0 {
		delete(p.perID, id)
	}
}

func (p *udpProxy) register(f *udpFlow) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.flows[f] = struct{}{}
	p.running.Add(1)
	p.counters.flows.Add(1)
	p.counters.flowsTotal.Add(1)
	return true
}

func (p *udpProxy) unregister(f *udpFlow) {
	p.mu.Lock()
	delete(p.flows, f)
	p.mu.Unlock()
	p.counters.flows.Add(-1)
	p.running.Done()
}

// close refuses new flows, ends every flow and waits until their
// goroutines have exited. It is idempotent.
func (p *udpProxy) close() {
	p.mu.Lock()
	p.closing = true
	flows := make([]*udpFlow, 0, len(p.flows))
	for f := range p.flows {
		flows = append(flows, f)
	}
	p.mu.Unlock()
	for _, f := range flows {
		f.close(flowEndShutdown)
	}
	p.running.Wait()
}

// identityAttr is the identity as logged.
func identityAttr(id policy.Identity) string {
	if id == anonymous {
		return "anonymous"
	}
	return string(id)
}
