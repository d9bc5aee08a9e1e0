package quicio

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/time/rate"
)

// Defaults for a zero Config.
const (
	DefaultMaxConns          = 10000
	DefaultMaxConnsPerSource = 64
	DefaultRetryThreshold    = 128
	// DefaultMaxHandshakeRate bounds the handshakes started per second. A
	// TLS 1.3 handshake costs the server about 0.5 ms of CPU (key exchange,
	// certificate signature, the QUIC packets), so 1000 a second keeps a
	// flood of address-validated peers to about half a core.
	DefaultMaxHandshakeRate = 1000
	DefaultIdleTimeout      = 30 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultInitialPacketSize is the QUIC packet size used from the first
	// packet on (quic-go's default is 1280). A CONNECT-IP tunnel must carry
	// 1280-byte inner IPv6 packets from the start (RFC 9484 §10.1), which
	// with QUIC, HTTP/3 and context-ID overhead needs packets of about
	// 1320 bytes; 1350 is what Cloudflare's QUIC stacks use. Path MTU
	// discovery grows it from there.
	DefaultInitialPacketSize = 1350
)

// Application error codes quicio closes connections with.
const (
	codeNoError    quic.ApplicationErrorCode = 0x100 // H3_NO_ERROR
	codeServerBusy quic.ApplicationErrorCode = 0x107 // H3_EXCESSIVE_LOAD
)

// Config configures a [Server]. Zero values mean the documented defaults.
type Config struct {
	// Addr is the UDP address to listen on, e.g. "0.0.0.0:443" or "[::]:443".
	Addr string
	// TLSConfig must hold the server certificate and NextProtos.
	TLSConfig *tls.Config
	// QUICConfig is cloned; nil means datagrams on, DefaultIdleTimeout and
	// DefaultHandshakeTimeout.
	QUICConfig *quic.Config
	// StateDir holds the persisted stateless-reset and token keys (0600).
	// Empty means fresh random keys on every start.
	StateDir string
	// ServerID is the first byte of every connection ID this server issues.
	ServerID byte
	// MaxConns caps concurrent connections (DefaultMaxConns).
	MaxConns int
	// MaxConnsPerSource caps concurrent connections from one source (an
	// IPv4 address or an IPv6 /64), handshakes included
	// (DefaultMaxConnsPerSource).
	MaxConnsPerSource int
	// RetryThreshold is the number of handshakes in flight above which new
	// peers must first prove their address with a Retry
	// (DefaultRetryThreshold). Negative means always ask for Retry.
	RetryThreshold int
	// MaxHandshakeRate caps the handshakes started per second
	// (DefaultMaxHandshakeRate), with bursts of a fifth of a second's worth
	// (at least 16). Once half of the burst is spent, new peers are asked
	// for a Retry first; an address-validated peer over the rate is refused
	// with CONNECTION_REFUSED before any crypto. Negative means no limit.
	MaxHandshakeRate int
	// SocketBuffer is the UDP buffer size (DefaultSocketBuffer).
	SocketBuffer int
	// Hooks are optional lifetime callbacks.
	Hooks Hooks
	// Logger receives lifecycle logs; nil discards them.
	Logger *slog.Logger
}

func (c *Config) populate() {
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxConnsPerSource == 0 {
		c.MaxConnsPerSource = DefaultMaxConnsPerSource
	}
	if c.RetryThreshold == 0 {
		c.RetryThreshold = DefaultRetryThreshold
	}
	if c.MaxHandshakeRate == 0 {
		c.MaxHandshakeRate = DefaultMaxHandshakeRate
	}
	if c.SocketBuffer == 0 {
		c.SocketBuffer = DefaultSocketBuffer
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem of c at once.
func (c *Config) Validate() error {
	var errs []error
	if c.Addr == "" {
		errs = append(errs, errors.New("addr: empty"))
	} else if _, err := netip.ParseAddrPort(c.Addr); err != nil {
		if _, _, err := net.SplitHostPort(c.Addr); err != nil {
			errs = append(errs, fmt.Errorf("addr: %v", err))
		}
	}
	if c.TLSConfig == nil {
		errs = append(errs, errors.New("tls: no configuration"))
	} else if len(c.TLSConfig.Certificates) == 0 && c.TLSConfig.GetCertificate == nil && c.TLSConfig.GetConfigForClient == nil {
		errs = append(errs, errors.New("tls: no certificate"))
	}
	if c.MaxConns < 0 {
		errs = append(errs, fmt.Errorf("max_conns: %d is negative", c.MaxConns))
	}
	if c.MaxConnsPerSource < 0 {
		errs = append(errs, fmt.Errorf("max_conns_per_source: %d is negative", c.MaxConnsPerSource))
	}
	if c.RetryThreshold < -1 {
		errs = append(errs, fmt.Errorf("retry_threshold: %d (want -1 for always, or a count)", c.RetryThreshold))
	}
	if c.MaxHandshakeRate < -1 {
		errs = append(errs, fmt.Errorf("max_handshake_rate: %d (want -1 for no limit, or a rate)", c.MaxHandshakeRate))
	}
	return errors.Join(errs...)
}

// Stats are a server's counters since it started.
type Stats struct {
	Accepted        uint64 // connections that completed the handshake
	Active          int64  // connections being served now
	Handshaking     int64  // handshakes in flight
	RejectedBusy    uint64 // over MaxConns
	RejectedSource  uint64 // over MaxConnsPerSource
	RejectedRate    uint64 // over MaxHandshakeRate
	RetriesAsked    uint64 // VerifySourceAddress said yes
	RejectedByHooks uint64 // OnEstablished refused
}

// Server accepts QUIC connections and runs one worker goroutine per
// connection that calls the Application.
//
// Lifecycle: NewServer opens the socket; Serve accepts until Shutdown or
// Close; Shutdown drains; Close stops at once. Every goroutine the Server
// started has exited when Serve has returned and Shutdown or Close has
// returned.
type Server struct {
	cfg  Config
	app  Application
	log  *slog.Logger
	conn *net.UDPConn
	tr   *quic.Transport
	ln   *quic.Listener

	handshaking atomic.Int64
	active      atomic.Int64
	stats       struct {
		accepted, busy, source, rate, retries, hooks atomic.Uint64
	}
	handshakes *rate.Limiter // nil: no limit

	workers sync.WaitGroup

	mu      sync.Mutex // guards the fields below
	conns   map[*quic.Conn]struct{}
	sources map[netip.Prefix]int // connections per SourceKey
	paths   *pathMemory          // peers whose path shrank (pathmtu.go)
	closing bool
}

type handshakeKey struct{}

// handshake tracks one connection attempt from ConnContext until it either
// completes (Accept returns it) or dies.
type handshake struct {
	done atomic.Bool
	s    *Server
}

func (h *handshake) finished() bool { return h.done.Load() }

func (h *handshake) finish() {
	if h.done.CompareAndSwap(false, true) {
		h.s.handshaking.Add(-1)
	}
}

// NewServer validates cfg, opens the UDP socket and starts listening.
func NewServer(cfg Config, app Application) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.populate()
	s := &Server{
		cfg:     cfg,
		app:     app,
		log:     cfg.Logger.With("component", "quicio"),
		conns:   make(map[*quic.Conn]struct{}),
		sources: make(map[netip.Prefix]int),
		paths:   newPathMemory(),
	}
	if cfg.MaxHandshakeRate > 0 {
		s.handshakes = rate.NewLimiter(rate.Limit(cfg.MaxHandshakeRate), handshakeBurst(cfg.MaxHandshakeRate))
	}
	tr := &quic.Transport{
		ConnectionIDGenerator: &connIDGenerator{serverID: cfg.ServerID},
		VerifySourceAddress:   s.verifySourceAddress,
		ConnContext:           s.connContext,
	}
	if cfg.StateDir != "" {
		rk, err := loadOrCreateKey(cfg.StateDir, resetKeyFile)
		if err != nil {
			return nil, err
		}
		tk, err := loadOrCreateKey(cfg.StateDir, tokenKeyFile)
		if err != nil {
			return nil, err
		}
		srk := quic.StatelessResetKey(*rk)
		tgk := quic.TokenGeneratorKey(*tk)
		tr.StatelessResetKey = &srk
		tr.TokenGeneratorKey = &tgk
	} else {
		var k quic.StatelessResetKey
		if _, err := randRead(k[:]); err != nil {
			return nil, err
		}
		tr.StatelessResetKey = &k
	}
	conn, err := listenUDP(cfg.Addr, socketOptions{buffer: cfg.SocketBuffer})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	tr.Conn = conn
	qc := quicConfig(cfg.QUICConfig, false)
	if qc.InitialPacketSize == 0 && qc.GetConfigForClient == nil {
		qc.GetConfigForClient = s.configForClient(qc)
	}
	ln, err := tr.Listen(cfg.TLSConfig, qc)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	s.conn, s.tr, s.ln = conn, tr, ln
	return s, nil
}

// Addr returns the local address the server listens on.
func (s *Server) Addr() net.Addr { return s.conn.LocalAddr() }

// Stats returns a snapshot of the server's counters.
func (s *Server) Stats() Stats {
	return Stats{
		Accepted:        s.stats.accepted.Load(),
		Active:          s.active.Load(),
		Handshaking:     s.handshaking.Load(),
		RejectedBusy:    s.stats.busy.Load(),
		RejectedSource:  s.stats.source.Load(),
		RejectedRate:    s.stats.rate.Load(),
		RetriesAsked:    s.stats.retries.Load(),
		RejectedByHooks: s.stats.hooks.Load(),
	}
}

// handshakeBurst is the limiter's bucket for rate handshakes a second: a
// fifth of a second's worth, at least 16.
func handshakeBurst(rate int) int { return max(rate/5, 16) }

// verifySourceAddress asks for a Retry only under handshake load: a Retry
// costs every peer a round trip, so it is kept for when the server has to
// defend its handshake CPU against spoofed floods. Load is many handshakes
// in flight, or a handshake rate that has spent half of its burst.
func (s *Server) verifySourceAddress(net.Addr) bool {
	if s.cfg.RetryThreshold < 0 || s.handshaking.Load() >= int64(s.cfg.RetryThreshold) ||
		(s.handshakes != nil && s.handshakes.Tokens() < float64(s.handshakes.Burst())/2) {
		s.stats.retries.Add(1)
		return true
	}
	return false
}

var (
	errTooManyFromSource = errors.New("too many connections from this source")
	errHandshakeRate     = errors.New("over the handshake rate")
)

// SourceKey is the unit the per-source limits count: the address for
// IPv4, its /64 for IPv6, the block one subscriber gets and can spread over
// at will.
func SourceKey(a netip.Addr) netip.Prefix {
	a = a.Unmap().WithZone("")
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.Prefix(64)
	return p
}

// connContext runs when quic-go creates a connection for a new peer, before
// any crypto: it enforces the per-source limit and starts handshake tracking.
func (s *Server) connContext(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
	src := addrOf(info.RemoteAddr)
	key := SourceKey(src)
	s.mu.Lock()
	if s.sources[key] >= s.cfg.MaxConnsPerSource {
		s.mu.Unlock()
		s.stats.source.Add(1)
		return nil, errTooManyFromSource
	}
	// Checked after the per-source limit, so that one source over its
	// limit spends none of everyone's handshake budget.
	if s.handshakes != nil && !s.handshakes.Allow() {
		s.mu.Unlock()
		s.stats.rate.Add(1)
		return nil, errHandshakeRate
	}
	s.sources[key]++
	s.mu.Unlock()

	h := &handshake{s: s}
	s.handshaking.Add(1)
	context.AfterFunc(ctx, func() {
		// A handshake that timed out may have sent packets too large for
		// the path: this peer's next connection starts small.
		if !h.finished() && handshakeTimedOut(context.Cause(ctx)) {
			s.paths.remember(src)
		}
		h.finish()
		s.mu.Lock()
		if s.sources[key]--; s.sources[key] <= 0 {
			delete(s.sources, key)
		}
		s.mu.Unlock()
	})
	return context.WithValue(ctx, handshakeKey{}, h), nil
}

// configForClient returns quic-go's per-connection configuration hook:
// qc with the initial packet size this peer's path takes (pathmtu.go).
func (s *Server) configForClient(qc *quic.Config) func(*quic.ClientInfo) (*quic.Config, error) {
	return func(info *quic.ClientInfo) (*quic.Config, error) {
		peer := addrOf(info.RemoteAddr)
		c := qc.Clone()
		c.GetConfigForClient = nil
		c.InitialPacketSize = initialPacketSize(routeMTU(peer, 0), s.paths.isSmall(peer))
		return c, nil
	}
}

func addrOf(a net.Addr) netip.Addr {
	if ua, ok := a.(*net.UDPAddr); ok {
		ip, _ := netip.AddrFromSlice(ua.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// Serve accepts connections until Shutdown or Close is called (it then
// returns nil) or the listener fails.
func (s *Server) Serve() error {
	s.log.Info("listening", "addr", s.conn.LocalAddr().String())
	for {
		c, err := s.ln.Accept(context.Background())
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing || errors.Is(err, quic.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		if h, ok := c.Context().Value(handshakeKey{}).(*handshake); ok {
			h.finish()
		}
		s.stats.accepted.Add(1)
		s.mu.Lock()
		if s.closing || len(s.conns) >= s.cfg.MaxConns {
			closing := s.closing
			s.mu.Unlock()
			if !closing {
				s.stats.busy.Add(1)
			}
			c.CloseWithError(codeServerBusy, "server busy")
			continue
		}
		s.conns[c] = struct{}{}
		s.workers.Add(1)
		s.mu.Unlock()
		go s.runWorker(c)
	}
}

// runWorker owns one connection: OnEstablished, ServeConn, close, OnClose.
// It is started by Serve and waited for by Shutdown and Close.
func (s *Server) runWorker(c *quic.Conn) {
	defer s.workers.Done()
	s.active.Add(1)
	defer s.active.Add(-1)
	log := s.log.With("remote_addr", c.RemoteAddr().String())
	log.Debug("connection established")

	var err error
	if s.cfg.Hooks.OnEstablished != nil {
		if err = s.cfg.Hooks.OnEstablished(c); err != nil {
			s.stats.hooks.Add(1)
			c.CloseWithError(codeServerBusy, err.Error())
		}
	}
	if err == nil {
		peer := addrOf(c.RemoteAddr())
		go func() {
			if err := watchPath(c, func() int { return routeMTU(peer, 0) }, s.paths); err != nil {
				log.Info("path MTU shrank: connection closed, the next starts small", "reason", err)
			}
		}()
		err = s.app.ServeConn(c.Context(), c)
	}
	c.CloseWithError(codeNoError, "")
	if s.cfg.Hooks.OnClose != nil {
		s.cfg.Hooks.OnClose(c, c.ConnectionStats())
	}
	if err != nil && c.Context().Err() == nil {
		log.Debug("connection ended", "err", err)
	}
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *Server) stopAccepting() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.closing = true
	return true
}

// Shutdown stops accepting, asks the Application to drain, waits for the
// workers until ctx is done, then closes what remains and the socket.
func (s *Server) Shutdown(ctx context.Context) error {
	if !s.stopAccepting() {
		return nil
	}
	s.ln.Close()
	err := s.app.Shutdown(ctx)
	done := make(chan struct{})
	go func() { s.workers.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.closeAll()
		<-done
	}
	s.closeTransport()
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// Close stops the server at once, closing every connection.
func (s *Server) Close() error {
	s.stopAccepting()
	s.ln.Close()
	s.closeAll()
	s.workers.Wait()
	return s.closeTransport()
}

// closeTransport closes the Transport and then the socket, which
// quic.Transport.Close leaves open because it did not create it.
func (s *Server) closeTransport() error {
	return errors.Join(s.tr.Close(), ignoreClosed(s.conn.Close()))
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func (s *Server) closeAll() {
	s.mu.Lock()
	conns := make([]*quic.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.CloseWithError(codeNoError, "server shutting down")
	}
}
