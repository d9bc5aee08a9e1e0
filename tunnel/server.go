package tunnel

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/masque-vpn/masque/policy"
	"github.com/masque-vpn/masque/quicio"
	"github.com/prometheus/client_golang/prometheus"
	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
	"github.com/yosida95/uritemplate/v3"
)

// Defaults for the session limits of a zero ServerConfig.
const (
	// DefaultMaxSessionsPerConn caps CONNECT-IP sessions on one QUIC
	// connection.
	DefaultMaxSessionsPerConn = 4
	// DefaultMaxSessionsPerIdentity caps one identity's CONNECT-IP sessions
	// over all its connections: a few devices sharing a token, not a
	// leaked token holding the whole pool.
	DefaultMaxSessionsPerIdentity = 16
)

// DefaultRequestTimeout is how long a connection may go without a request
// in progress before the server closes it: an unauthenticated peer gets no
// more of the server than the handshake, the response and this wait.
const DefaultRequestTimeout = 5 * time.Second

// ServerConfig configures a [Server].
type ServerConfig struct {
	// Auth authenticates every request. Required.
	Auth *policy.Authenticator
	// Pool4 and Pool6 hand out client addresses; at least one is required.
	// A family without a pool is not tunnelled.
	Pool4, Pool6 *policy.Pool
	// Destinations decides which inner destinations clients may reach.
	// Required.
	Destinations *policy.Destinations
	// Device is the server TUN that carries the clients' packets to the
	// kernel (forwarding and NAT happen there). Required.
	Device Device
	// Routes are advertised to every full-tunnel client; empty means all of
	// each family that has a pool.
	Routes []netip.Prefix
	// DNS servers sent in a DNS configuration capsule; empty sends none.
	DNS []netip.Addr
	// Port is the port clients address in the request's :authority (the
	// listen port); 0 accepts any.
	Port int
	// Names are the hosts a request's :authority may name besides the
	// local address of the connection it came on (which serves a client
	// that dialed an IP address, whatever name its SNI held): DNS names
	// ("*.NAME" matches one more label, as in a certificate) and IP
	// addresses. masqued takes them from its certificate's subject
	// alternative names and --server-name. Any other host, or another port
	// than Port, is refused with 421 Misdirected Request (RFC 9110
	// §15.5.20).
	Names []string
	// MaxSessionsPerConn caps sessions per QUIC connection
	// (DefaultMaxSessionsPerConn).
	MaxSessionsPerConn int
	// MaxSessionsPerIdentity caps one identity's sessions over all its
	// connections (DefaultMaxSessionsPerIdentity).
	MaxSessionsPerIdentity int
	// RequestTimeout closes a connection that has had no request in
	// progress this long: after the handshake, or after its last request
	// (session, flow or refusal) ended (DefaultRequestTimeout).
	RequestTimeout time.Duration
	// UDP configures CONNECT-UDP (RFC 9298), served next to CONNECT-IP with
	// the same Auth and Destinations.
	UDP UDPConfig
	// Logger receives lifecycle logs; nil discards them.
	Logger *slog.Logger
}

// Validate reports every problem of c at once.
func (c *ServerConfig) Validate() error {
	var errs []error
	if c.Auth == nil {
		errs = append(errs, errors.New("auth: missing"))
	}
	if c.Pool4 == nil && c.Pool6 == nil {
		errs = append(errs, errors.New("pools: need an IPv4 or an IPv6 pool"))
	}
	if c.Pool4 != nil && !c.Pool4.Prefix().Addr().Is4() {
		errs = append(errs, errors.New("pool4: not an IPv4 prefix"))
	}
	if c.Pool6 != nil && !c.Pool6.Prefix().Addr().Is6() {
		errs = append(errs, errors.New("pool6: not an IPv6 prefix"))
	}
	if c.Destinations == nil {
		errs = append(errs, errors.New("destinations: missing"))
	}
	if c.Device == nil {
		errs = append(errs, errors.New("device: missing"))
	}
	for i, r := range c.Routes {
		if !r.IsValid() || r != r.Masked() {
			errs = append(errs, fmt.Errorf("routes[%d]: %s is not a masked prefix", i, r))
		}
	}
	if c.MaxSessionsPerConn < 0 {
		errs = append(errs, fmt.Errorf("max_sessions_per_conn: %d is negative", c.MaxSessionsPerConn))
	}
	if c.MaxSessionsPerIdentity < 0 {
		errs = append(errs, fmt.Errorf("max_sessions_per_identity: %d is negative", c.MaxSessionsPerIdentity))
	}
	if c.RequestTimeout < 0 {
		errs = append(errs, fmt.Errorf("request_timeout: %v is negative", c.RequestTimeout))
	}
	if _, err := newServerNames(c.Names, c.Port); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.UDP.validate()...)
	return errors.Join(errs...)
}

// Server is the MASQUE application: an HTTP/3 server with datagrams and
// extended CONNECT that serves CONNECT-IP (RFC 9484) and bridges sessions
// to a TUN device. It implements [quicio.Application].
//
// Data flow (one goroutine per arrow source):
//
//	conn datagrams ─► dgramMux (per connection) ─► session.runTUNWriter ─► Device.Write
//	Device.Read ─► Server.runTUNReader (one) ─► ipRouter ─► session.runSend ─► SendDatagram
type Server struct {
	cfg      ServerConfig
	log      *slog.Logger
	handler  http.Handler // routes requests (serveRequest)
	requests atomic.Int64 // requests in progress (parsed): sessions, flows and those being answered
	router   *ipRouter
	counters counters
	routes   []connectip.IPRoute
	dns      []netip.Addr // sent in DNS_ASSIGN; empty sends none
	nextID   atomic.Uint64
	udp      *udpProxy
	names    *serverNames                        // what a request's :authority may name
	dests    atomic.Pointer[policy.Destinations] // cfg.Destinations until SetPolicy
	budget   headerBudget                        // header bytes of unparsed requests, per source

	tunDone chan struct{}

	mu       sync.Mutex // guards the fields below
	sessions map[*session]struct{}
	conns    map[*quic.Conn]*h3conn
	perConn  map[*quic.Conn]int
	perID    map[policy.Identity]int
	draining bool // GOAWAY sent on every connection, and sent on new ones at once
	closing  bool // no new session or flow: what is open is being ended
}

var _ quicio.Application = (*Server)(nil)

// NewServer validates cfg and starts the TUN reader. Call Close (or
// Shutdown) to stop it.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxSessionsPerConn == 0 {
		cfg.MaxSessionsPerConn = DefaultMaxSessionsPerConn
	}
	if cfg.MaxSessionsPerIdentity == 0 {
		cfg.MaxSessionsPerIdentity = DefaultMaxSessionsPerIdentity
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "tunnel"),
		router:   newIPRouter(),
		sessions: make(map[*session]struct{}),
		conns:    make(map[*quic.Conn]*h3conn),
		perConn:  make(map[*quic.Conn]int),
		perID:    make(map[policy.Identity]int),
		tunDone:  make(chan struct{}),
	}
	routes := cfg.Routes
	if len(routes) == 0 {
		if cfg.Pool4 != nil {
			routes = append(routes, netip.MustParsePrefix("0.0.0.0/0"))
		}
		if cfg.Pool6 != nil {
			routes = append(routes, netip.MustParsePrefix("::/0"))
		}
	}
	s.routes = prefixesToRoutes(routes)
	s.names, _ = newServerNames(cfg.Names, cfg.Port) // validated above
	for _, a := range cfg.DNS {
		s.dns = append(s.dns, a.WithZone(""))
	}
	mux := http.NewServeMux()
	mux.HandleFunc(IPPathPrefix, s.serveIP)
	s.dests.Store(cfg.Destinations)
	s.udp = newUDPProxy(cfg.UDP, cfg.Auth, cfg.Destinations, s.names, cfg.Logger, &s.counters.udp)
	s.udp.authenticated = s.authenticated
	s.udp.muxOf = func(c *quic.Conn) *dgramMux {
		if hc := s.h3connOf(c); hc != nil {
			return hc.mux
		}
		return nil
	}
	mux.HandleFunc(UDPPathPrefix, s.udp.serve)
	mux.HandleFunc("/", s.serveNotFound)
	s.handler = mux
	go s.runTUNReader()
	return s, nil
}

// Collector returns the server's metrics for a Prometheus registry.
func (s *Server) Collector() prometheus.Collector {
	return collector{c: &s.counters, pool4: s.cfg.Pool4, pool6: s.cfg.Pool6}
}

// SetPolicy replaces the destination policy and the CONNECT-UDP rules
// (nil: no allow-lists, no anonymous access), as on a reload. Sessions stay
// up: CONNECT-IP packets are checked against the new policy from the next
// packet on; new CONNECT-UDP requests are decided by it, and open flows
// whose target it refuses are closed (their count is returned). dests must
// not be nil.
func (s *Server) SetPolicy(dests *policy.Destinations, rules *policy.UDPRules) (flowsClosed int) {
	s.dests.Store(dests)
	return s.udp.setPolicy(dests, rules)
}

// Sessions returns the number of open CONNECT-IP sessions.
func (s *Server) Sessions() int { return int(s.counters.sessions.Load()) }

// ServeConn serves HTTP/3 on one QUIC connection until it ends.
func (s *Server) ServeConn(ctx context.Context, c *quic.Conn) error {
	err := s.serveH3(c)
	// serveH3 returns once the connection is closing; its context ends a
	// moment later, with the cause. Count it if we (or http3, for us)
	// closed it over a protocol error of the peer's (not for our own
	// limit, counted on its own).
	select {
	case <-c.Context().Done():
	case <-time.After(time.Second):
	}
	if ae, ok := errors.AsType[*quic.ApplicationError](context.Cause(c.Context())); ok && !ae.Remote &&
		http3.ErrCode(ae.ErrorCode) != http3.ErrCodeNoError && err != errUnauthLimit {
		s.counters.connErrors[connErrorIndex(http3.ErrCode(ae.ErrorCode))].Add(1)
	}
	s.mu.Lock()
	delete(s.perConn, c)
	s.mu.Unlock()
	return err
}

// TUNDone is closed when the TUN reader has exited (after the Device was
// closed).
func (s *Server) TUNDone() <-chan struct{} { return s.tunDone }

// refuse answers a request that does not become a session. Error mapping to
// HTTP lives here and nowhere else.
func (s *Server) refuse(w http.ResponseWriter, why refusal, status int, proxyStatusErr string) {
	s.counters.refused[why].Add(1)
	if proxyStatusErr != "" {
		// RFC 9209 Proxy-Status.
		w.Header().Set("Proxy-Status", "masque; error="+proxyStatusErr)
	}
	w.WriteHeader(status)
}

func (s *Server) serveIP(w http.ResponseWriter, r *http.Request) {
	log := s.log.With("remote_addr", r.RemoteAddr)
	scope, err := parseIPPath(r.URL.EscapedPath())
	if err == nil && (r.URL.RawQuery != "" || r.URL.ForceQuery) {
		// The default template has no query (RFC 9484 §3): the URI is
		// not one it expands to.
		err = errors.New("request URI has a query")
	}
	if err != nil {
		log.Debug("bad connect-ip request", "err", err)
		s.refuse(w, refuseBadRequest, http.StatusBadRequest, "")
		return
	}
	conn, _ := r.Context().Value(connKey{}).(*quic.Conn)
	if err := s.names.check(r.Host, localAddrOf(conn)); err != nil {
		why := refuseBadRequest
		if errors.Is(err, errMisdirected) {
			why = refuseMisdirected
		}
		log.Debug("bad connect-ip request", "err", err, "authority", r.Host)
		s.refuse(w, why, requestStatus(err), "")
		return
	}
	// connect-ip-go v0.6 does not expand template variables itself: check the
	// rest of the request against the concrete URI the client used.
	tmpl, err := uritemplate.New("https://" + r.Host + r.URL.EscapedPath())
	if err != nil {
		s.refuse(w, refuseBadRequest, http.StatusBadRequest, "")
		return
	}
	if _, err := connectip.ParseProxyRequest(r, tmpl); err != nil {
		status := http.StatusBadRequest
		if perr, ok := errors.AsType[*connectip.ProxyRequestParseError](err); ok {
			status = perr.HTTPStatus
		}
		log.Debug("bad connect-ip request", "err", err)
		s.refuse(w, refuseBadRequest, status, "")
		return
	}
	var chains [][]*x509.Certificate
	if r.TLS != nil {
		chains = r.TLS.VerifiedChains
	}
	id, err := s.cfg.Auth.Authenticate(r.Header.Values("Authorization"), chains)
	if err != nil && requestStatus(err) == http.StatusBadRequest {
		log.Debug("bad connect-ip request", "err", err)
		s.refuse(w, refuseBadRequest, requestStatus(err), "")
		return
	}
	if err != nil {
		s.logRefused(r, log, slog.LevelInfo, "reason", "unauthenticated", "err", err)
		w.Header().Set("WWW-Authenticate", `Bearer realm="masque"`)
		s.refuse(w, refuseAuth, requestStatus(err), "")
		return
	}
	log = log.With("identity", string(id))
	s.authenticated(r)

	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		s.refuse(w, refuseShuttingDown, http.StatusServiceUnavailable, "")
		return
	}
	if conn != nil && s.perConn[conn] >= s.cfg.MaxSessionsPerConn {
		s.mu.Unlock()
		s.logRefused(r, log, slog.LevelInfo, "reason", "too many sessions on connection", "limit", s.cfg.MaxSessionsPerConn)
		s.refuse(w, refuseConnLimit, http.StatusTooManyRequests, "connection_limit_reached")
		return
	}
	if s.perID[id] >= s.cfg.MaxSessionsPerIdentity {
		s.mu.Unlock()
		s.logRefused(r, log, slog.LevelInfo, "reason", "too many sessions for identity", "limit", s.cfg.MaxSessionsPerIdentity)
		s.refuse(w, refuseIdentityLimit, http.StatusTooManyRequests, "connection_limit_reached")
		return
	}
	if conn != nil {
		s.perConn[conn]++
	}
	s.perID[id]++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if conn != nil {
			if s.perConn[conn]--; s.perConn[conn] <= 0 {
				delete(s.perConn, conn)
			}
		}
		if s.perID[id]--; s.perID[id] <= 0 {
			delete(s.perID, id)
		}
		s.mu.Unlock()
	}()

	ss := &session{srv: s, id: s.nextID.Add(1), identity: id, scope: scope}
	if err := ss.acquireAddresses(); err != nil {
		s.logRefused(r, log, slog.LevelWarn, "reason", "address pool exhausted", "err", err)
		s.refuse(w, refusePoolExhausted, http.StatusServiceUnavailable, "")
		return
	}
	defer ss.releaseAddresses()

	// RFC 9484 §4.4: a 2xx response, and the capsule protocol (RFC 9297
	// §3.2). The stream is ours from here on (control.go).
	w.Header().Set(http3.CapsuleProtocolHeader, "?1")
	w.WriteHeader(http.StatusOK)
	ss.str = streamOf(w)
	ss.log = log.With("session_id", ss.id)
	abort := func() {
		ss.str.CancelRead(quic.StreamErrorCode(http3.ErrCodeInternalError))
		ss.str.CancelWrite(quic.StreamErrorCode(http3.ErrCodeInternalError))
	}
	hc := s.h3connOf(conn)
	if hc == nil {
		// Only a connection served by serveH3 has a datagram reader.
		ss.log.Warn("session setup failed", "err", "connection not served by this server")
		abort()
		return
	}
	ss.qconn = conn
	ss.mux = hc.mux
	ss.dgramPrefix = append(quicvarint.Append(nil, uint64(ss.str.StreamID()/4)), 0)
	if err := ss.configure(); err != nil {
		ss.log.Warn("session setup failed", "err", err)
		abort()
		return
	}
	var senders sync.WaitGroup
	ss.startSender(&senders)
	defer func() {
		close(ss.sendDone)
		senders.Wait()
	}()
	if !s.register(ss) {
		// Shutting down since the request was accepted: end the stream
		// as close would.
		s.counters.refused[refuseShuttingDown].Add(1)
		ss.str.CancelRead(quic.StreamErrorCode(http3.ErrCodeNoError))
		ss.str.Close()
		return
	}
	defer s.unregister(ss)
	ss.startReceiver()
	ss.mux.register(ss.str.StreamID(), ss)
	defer func() {
		ss.mux.forget(ss.str.StreamID())
		ss.stopReceiver()
	}()
	ss.log.Info("session up", "addresses", ss.prefixes())
	start := time.Now()
	ss.run()
	ss.log.Info("session down", "duration", time.Since(start).Round(time.Millisecond).String())
}

// maxHeaderBytes bounds a request's header section.
const maxHeaderBytes = 16 << 10

// serveNotFound answers a request for a path that is no MASQUE template.
func (s *Server) serveNotFound(w http.ResponseWriter, _ *http.Request) {
	s.counters.unrouted[unroutedNotFound].Add(1)
	w.WriteHeader(http.StatusNotFound)
}

// authenticated notes that r, a request of an identity, authenticated: its
// connection no longer counts against its source's unauthenticated ones.
func (s *Server) authenticated(r *http.Request) {
	if c, _ := r.Context().Value(connKey{}).(*quic.Conn); c != nil {
		if hc := s.h3connOf(c); hc != nil {
			hc.mem.authenticated()
		}
	}
}

// connKey carries the request's QUIC connection in its context.
type connKey struct{}

// h3connOf returns the served connection c, or nil.
func (s *Server) h3connOf(c *quic.Conn) *h3conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[c]
}

func (s *Server) register(ss *session) bool {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return false
	}
	s.sessions[ss] = struct{}{}
	s.mu.Unlock()
	s.router.add(ss, ss.addrs()...)
	s.counters.sessions.Add(1)
	s.counters.sessionsTotal.Add(1)
	return true
}

func (s *Server) unregister(ss *session) {
	s.router.remove(ss, ss.addrs()...)
	s.mu.Lock()
	delete(s.sessions, ss)
	s.mu.Unlock()
	s.counters.sessions.Add(-1)
}

func prefixesToRoutes(ps []netip.Prefix) []connectip.IPRoute {
	routes := make([]connectip.IPRoute, 0, len(ps))
	for _, p := range ps {
		routes = append(routes, connectip.IPRoute{StartIP: p.Masked().Addr(), EndIP: lastAddr(p)})
	}
	return sortMergeRoutes(routes)
}
