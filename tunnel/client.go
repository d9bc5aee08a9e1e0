package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/masque-vpn/masque/quicio"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
	"golang.org/x/time/rate"
)

// DefaultClientMTU is the default cap on the client's inner MTU.
const DefaultClientMTU = 1400

// minIPv6MTU is the IPv6 minimum link MTU, which a CONNECT-IP tunnel that
// carries IPv6 must support (RFC 9484 §10.1).
const minIPv6MTU = 1280

// minIPv4MTU is the IPv4 minimum datagram size every host accepts (RFC 791).
const minIPv4MTU = 576

// DefaultSetupTimeout bounds how long Connect waits for the server's
// response and its address assignment.
const DefaultSetupTimeout = 10 * time.Second

// ClientConfig configures [Connect].
type ClientConfig struct {
	// Conn is an established QUIC connection to the server, with datagrams.
	// The Client does not close it.
	Conn *quic.Conn
	// Authority is the request's :authority, "host:port" of the server as
	// the user named it. Template's host wins when Template is set.
	Authority string
	// Template is the server's CONNECT-IP URI template (RFC 9484 §2),
	// e.g. "https://proxy.example:443/vpn{?target,ipproto}"; its
	// variables target and ipproto, where it has them, are "*" (the whole
	// Internet, every protocol). Empty: the well-known path on Authority.
	Template string
	// Token, if set, is sent as "Authorization: Bearer <Token>".
	Token string
	// SetupTimeout bounds the request and the wait for the address
	// assignment (DefaultSetupTimeout).
	SetupTimeout time.Duration
	// MaxMTU caps the inner MTU the client reports (DefaultClientMTU).
	MaxMTU int
	// SetMTU, if set, is called from Run whenever the usable inner MTU
	// changes: the smaller of MaxMTU and the datagram budget, which grows
	// as QUIC's path MTU discovery finds room.
	SetMTU func(mtu int) error
	// OnDNS, if set, is called (from the capsule reader) with the DNS
	// servers each DNS_ASSIGN names that Policy accepts (acceptDNS), when
	// there are any; again when new routes change which are accepted.
	OnDNS func([]netip.Addr)
	// OnRoutes, if set, is called (from the capsule reader) when a
	// ROUTE_ADVERTISEMENT after the first changes Routes; the caller
	// re-reads Routes, and should coalesce a flood of them.
	OnRoutes func(*Client)
	// LocalNetworks are the host's directly connected networks (its
	// interfaces' prefixes, but loopback's and the TUN's): a packet from
	// the server with a source inside one poses as the LAN and is
	// dropped (source_local). At most maxLocalNetworks are checked; the
	// TUN's reverse-path filter covers the rest.
	LocalNetworks []netip.Prefix
	// Policy bounds the addresses, routes and DNS servers the client
	// takes from the server (clientpolicy.go).
	Policy ClientPolicy
	// Logger receives lifecycle logs; nil discards them.
	Logger *slog.Logger
}

// RefusedError is returned by [Connect] when the server answers the
// CONNECT-IP request with a non-2xx status.
type RefusedError struct {
	Status      int
	ProxyStatus string // the Proxy-Status header, if any
}

func (e *RefusedError) Error() string { return refusedText("tunnel", e.Status, e.ProxyStatus) }

// refusedText describes a server's non-2xx answer to a request for what.
func refusedText(what string, status int, proxyStatus string) string {
	s := fmt.Sprintf("server refused the %s: %d %s", what, status, strings.ToLower(http.StatusText(status)))
	if proxyStatus != "" {
		s += " (" + proxyStatus + ")"
	}
	return s
}

// Client is one CONNECT-IP session to a server.
//
// The client speaks HTTP/3 around an http3.RawClientConn, like the server
// (h3conn.go), and for the same reason: were http3 to see the server's
// SETTINGS_H3_DATAGRAM it would move every datagram through a 32-entry
// queue per stream that drops under load. So the client reads the server's
// control stream, sends the CONNECT-IP request, parses the capsules of the
// response (capsule.go) and reads and writes the datagrams itself.
type Client struct {
	cfg ClientConfig
	log *slog.Logger
	str *http3.RequestStream // the CONNECT-IP request stream

	// dgramPrefix is the quarter stream ID and context ID 0 that start
	// every datagram (RFC 9297 §2.1, RFC 9484 §6).
	dgramPrefix []byte

	assigned  []netip.Prefix // the first ADDRESS_ASSIGN (RFC 9484 §4.7.1); the capsule reader's
	lease     []netip.Prefix // assigned, checked by Connect, as host prefixes
	addresses []netip.Prefix // those of lease the session uses (set by Connect)
	localNets []netip.Prefix // cfg.LocalNetworks, capped: no source of a received packet
	server    netip.Addr     // the server's address, never assigned or routed in
	throws    []netip.Prefix // never routed into the tunnel (ClientPolicy.throws)
	stats     clientCounters
	started   time.Time
	budget    atomic.Int64 // largest inner packet a datagram carries now

	capsuleErr chan error // the capsule reader's end: the session's
	upErr      chan error // a send failure: the session's end

	mu      sync.Mutex // guards routes, dns and offered
	routes  []netip.Prefix
	dns     []netip.Addr
	offered []netip.Addr // the DNS servers the server named last
	// gotAddrs and gotRoutes are closed by the first ADDRESS_ASSIGN and
	// ROUTE_ADVERTISEMENT, which Connect waits for.
	gotRoutes, gotAddrs  chan struct{}
	routesOnce, addrOnce sync.Once

	goingAway    chan struct{} // closed by the server's first GOAWAY
	goingAwayOne sync.Once

	// capsuleLog bounds the lines the capsule reader logs about what the
	// server sends (capsuleLogf): a flood of capsules is not a flood of
	// lines.
	capsuleLog        *rate.Limiter
	capsuleSuppressed int // lines not logged since the last one; the capsule reader's
}

type clientCounters struct {
	txPackets, txBytes, rxPackets, rxBytes atomic.Uint64
	drops                                  [numDropReasons]atomic.Uint64
	refused                                [numServerRefusals]atomic.Uint64
}

// serverRefusal is a kind of thing the client refused from the server's
// capsules (clientpolicy.go): counted, and logged within a budget.
type serverRefusal uint8

const (
	refusedRoutesProtocol serverRefusal = iota // protocol-scoped ranges
	refusedRoutesOverCap                       // ranges past MaxRoutes
	refusedRoutesOutside                       // ranges outside --route or thrown
	refusedDNS                                 // DNS servers (acceptDNS)
	refusedAddressChange                       // later ADDRESS_ASSIGNs that changed the addresses
	numServerRefusals
)

var serverRefusalNames = [numServerRefusals]string{
	refusedRoutesProtocol: "routes_protocol_scoped",
	refusedRoutesOverCap:  "routes_over_cap",
	refusedRoutesOutside:  "routes_outside_policy",
	refusedDNS:            "dns_servers",
	refusedAddressChange:  "address_changes",
}

// Connect opens a full-tunnel CONNECT-IP session on cfg.Conn and waits for
// the server's address assignment and route advertisement.
func Connect(ctx context.Context, cfg ClientConfig) (*Client, error) {
	if cfg.Conn == nil {
		return nil, errors.New("connect-ip: no connection")
	}
	if cfg.SetupTimeout == 0 {
		cfg.SetupTimeout = DefaultSetupTimeout
	}
	if cfg.MaxMTU == 0 {
		cfg.MaxMTU = DefaultClientMTU
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.SetupTimeout)
	defer cancel()
	c := &Client{
		cfg: cfg, log: cfg.Logger.With("component", "tunnel"),
		capsuleErr: make(chan error, 1), upErr: make(chan error, 1),
		gotRoutes: make(chan struct{}), gotAddrs: make(chan struct{}),
		goingAway:  make(chan struct{}),
		capsuleLog: rate.NewLimiter(capsuleLogRate, capsuleLogBurst),
	}
	c.localNets = localNetworks(cfg.LocalNetworks)
	if len(cfg.LocalNetworks) > maxLocalNetworks {
		c.log.Warn("more connected networks than the client checks received sources against; the TUN's reverse-path filter covers the rest",
			"networks", len(cfg.LocalNetworks), "checked", maxLocalNetworks)
	}
	if ap, err := netip.ParseAddrPort(cfg.Conn.RemoteAddr().String()); err == nil {
		c.server = ap.Addr().Unmap()
	}
	c.throws = cfg.Policy.throws(c.server)
	fail := func(err error) (*Client, error) {
		if c.str != nil {
			c.Close()
		}
		if ctx.Err() != nil {
			cfg.Conn.CloseWithError(0x10c, "setup timeout") // H3_REQUEST_CANCELLED
			return nil, fmt.Errorf("connect-ip: no response from server within %s", cfg.SetupTimeout)
		}
		return nil, err
	}

	tr := &http3.Transport{EnableDatagrams: true}
	raw := tr.NewRawClientConn(cfg.Conn)
	settings := make(chan peerSettings, 1)
	go acceptUniStreams(cfg.Conn, http3.ErrCodeIDError, controlHandlers{
		settings: func(ps peerSettings) { settings <- ps },
		goAway:   c.onGoAway,
	})
	var ps peerSettings
	select {
	case ps = <-settings:
	case <-ctx.Done():
		return fail(ctx.Err())
	case <-cfg.Conn.Context().Done():
		return fail(fmt.Errorf("connect-ip: %w", context.Cause(cfg.Conn.Context())))
	}
	if !ps.extendedConnect || !ps.datagram {
		return fail(errors.New("connect-ip: server does not support extended CONNECT with HTTP datagrams"))
	}

	u, err := requestURL(cfg)
	if err != nil {
		return fail(err)
	}
	// The request's context must outlive setup: it is the stream's.
	req := (&http.Request{
		Method: http.MethodConnect, Proto: "connect-ip", Host: u.Host, URL: u,
		Header: http.Header{http3.CapsuleProtocolHeader: {"?1"}},
	}).WithContext(context.WithoutCancel(ctx))
	if cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+cfg.Token)
	}
	str, err := raw.OpenRequestStream(ctx)
	if err != nil {
		return fail(fmt.Errorf("connect-ip: open request stream: %w", err))
	}
	c.str = str
	c.dgramPrefix = append(quicvarint.Append(nil, uint64(str.StreamID()/4)), 0)
	if err := str.SendRequestHeader(req); err != nil {
		return fail(fmt.Errorf("connect-ip: send request: %w", err))
	}
	stop := context.AfterFunc(ctx, func() { str.CancelRead(quic.StreamErrorCode(http3.ErrCodeRequestCanceled)) })
	rsp, err := str.ReadResponse()
	stop()
	if err != nil {
		return fail(fmt.Errorf("connect-ip: read response: %w", err))
	}
	if rsp.StatusCode < 200 || rsp.StatusCode > 299 {
		c.Close()
		return nil, &RefusedError{Status: rsp.StatusCode, ProxyStatus: rsp.Header.Get("Proxy-Status")}
	}
	go func() { c.capsuleErr <- c.readCapsules() }()

	// The assignment, then the route advertisement (packets outside the
	// routes are not sent, so wait for it).
	for _, ch := range []chan struct{}{c.gotAddrs, c.gotRoutes} {
		select {
		case <-ch:
		case err := <-c.capsuleErr:
			c.capsuleErr <- err
			return fail(fmt.Errorf("connect-ip: session ended during setup: %v", err))
		case <-ctx.Done():
			return fail(ctx.Err())
		}
	}
	lease, err := cfg.Policy.checkAssignment(c.assigned, c.server)
	if err != nil {
		c.log.Error("server's address assignment refused", "addresses", len(c.assigned), "err", err)
		c.Close()
		return nil, err
	}
	c.lease = lease
	c.addresses = c.lease
	if len(c.addresses) == 0 {
		c.Close()
		return nil, errors.New("connect-ip: server assigned no address")
	}
	c.probeBudget()
	if c.hasIPv6() && c.budget.Load() < minIPv6MTU {
		// A connection that started small (quicio: the path shrank
		// before) grows with path MTU discovery: give it a moment.
		c.WaitMTU(ctx, minIPv6MTU, ipv6MTUWait)
	}
	if budget := c.budget.Load(); c.hasIPv6() && budget < minIPv6MTU {
		// RFC 9484 §10.1: IPv6 needs 1280-byte packets; a tunnel that
		// cannot carry them must not carry IPv6.
		c.addresses = slices.DeleteFunc(slices.Clone(c.lease), func(p netip.Prefix) bool { return p.Addr().Is6() })
		if len(c.addresses) == 0 {
			c.Close()
			return nil, fmt.Errorf("connect-ip: the path carries inner packets of at most %d bytes, below the 1280 IPv6 needs (RFC 9484 §10.1), and the server assigned no IPv4 address", budget)
		}
		c.log.Warn("the path carries inner packets of at most this size, below the 1280 IPv6 needs (RFC 9484 §10.1): IPv4 only",
			"max_inner_packet", budget, "ipv4", c.addresses)
	}
	c.started = time.Now()
	return c, nil
}

// onGoAway takes the server's GOAWAY (RFC 9114 §5.2): it is draining. The
// session goes on until the server ends it; GoingAway tells the caller to
// open the next one elsewhere, or on a new connection, meanwhile.
func (c *Client) onGoAway(next quic.StreamID) {
	c.goingAwayOne.Do(func() {
		c.log.Info("server is going away (GOAWAY)", "next_stream", uint64(next))
		close(c.goingAway)
	})
}

// GoingAway is closed when the server announces that it is shutting down
// (HTTP/3 GOAWAY). The session still works until the server ends it or its
// drain deadline passes.
func (c *Client) GoingAway() <-chan struct{} { return c.goingAway }

// readCapsules reads the request stream's capsules until it ends and
// returns why (nil: the server closed it).
func (c *Client) readCapsules() error {
	p := http3.NewCapsuleParser(c.str)
	for {
		typ, r, err := p.Next()
		if err != nil {
			if se, ok := errors.AsType[*quic.StreamError](err); errors.Is(err, io.EOF) || (ok && se.ErrorCode == quic.StreamErrorCode(http3.ErrCodeNoError)) {
				return nil // the server ended the session
			}
			return err
		}
		switch typ {
		case capsuleAddressAssign, capsuleRouteAdvertisement, capsuleDNSAssign:
		default:
			// Unknown capsules are skipped (RFC 9297 §3.2); so is
			// ADDRESS_REQUEST: the client assigns nothing.
			if err := r.Discard(); err != nil {
				return err
			}
			continue
		}
		b, err := capsuleBytes(r)
		if err != nil {
			return err
		}
		switch typ {
		case capsuleAddressAssign:
			all, err := parseAddressAssign(b)
			if err != nil {
				return err
			}
			// An unspecified address answers a request it could not
			// fulfil (RFC 9484 §4.7.1); it assigns nothing.
			prefixes := slices.DeleteFunc(all, func(p netip.Prefix) bool { return p.Addr().IsUnspecified() })
			assigned := false
			c.addrOnce.Do(func() {
				c.assigned = prefixes // checked by Connect
				assigned = true
				close(c.gotAddrs)
			})
			if !assigned && !slices.Equal(hostPrefixes(prefixes), hostPrefixes(c.assigned)) {
				// The TUN's addresses and routes follow the first
				// assignment; packets keep that source.
				c.stats.refused[refusedAddressChange].Add(1)
				c.capsuleLogf(slog.LevelWarn, "server changed the assigned addresses; keeping the first", "assigned", len(prefixes), "kept", c.assigned)
			}
		case capsuleRouteAdvertisement:
			routes, err := parseRouteAdvertisement(b)
			if err != nil {
				return err
			}
			prefixes, rep := c.cfg.Policy.clientRoutes(routes, c.throws)
			c.stats.refused[refusedRoutesProtocol].Add(uint64(rep.protocol))
			c.stats.refused[refusedRoutesOverCap].Add(uint64(rep.overCap))
			c.stats.refused[refusedRoutesOutside].Add(uint64(rep.outside))
			if rep.any() {
				// One line per advertisement, not per range; ranges
				// outside --route are the user's choice, not the
				// server's fault.
				lvl := slog.LevelDebug
				if rep.protocol+rep.overCap > 0 {
					lvl = slog.LevelWarn
				}
				c.capsuleLogf(lvl, "routes from the server refused", "ranges", len(routes),
					"protocol_scoped", rep.protocol, "over_cap", rep.overCap, "max_routes", MaxRoutes,
					"outside_policy", rep.outside, "routes", len(prefixes))
			}
			c.mu.Lock()
			changed := !slices.Equal(c.routes, prefixes)
			c.routes = prefixes
			offered := c.offered
			c.mu.Unlock()
			first := false
			c.routesOnce.Do(func() { first = true; close(c.gotRoutes) })
			if !first && changed {
				c.capsuleLogf(slog.LevelInfo, "routes updated", "routes", len(prefixes))
				if c.cfg.OnRoutes != nil {
					c.cfg.OnRoutes(c)
				}
			}
			if offered != nil {
				c.takeDNS(offered, false)
			}
		case capsuleDNSAssign:
			dns, err := parseDNSAssign(b)
			if err != nil {
				return err
			}
			c.takeDNS(dns, true)
		}
	}
}

// takeDNS keeps those of the DNS servers the server offered that the
// policy accepts (acceptDNS), logs once what it refused, and hands them to
// OnDNS. It counts the refused servers of a DNS_ASSIGN (fresh), not again
// when new routes make it look at the same offer.
func (c *Client) takeDNS(offered []netip.Addr, fresh bool) {
	offered = slices.Clone(offered)
	c.mu.Lock()
	dns, bad := acceptDNS(offered, c.routes, c.throws)
	changed := !slices.Equal(dns, c.dns)
	c.offered, c.dns = offered, dns
	c.mu.Unlock()
	if fresh {
		c.stats.refused[refusedDNS].Add(uint64(len(bad)))
	}
	if len(bad) > 0 {
		c.capsuleLogf(slog.LevelWarn, "dns servers from the server refused", "refused", logList(bad), "max_dns_servers", MaxDNSServers, "accepted", dns)
	}
	if !changed {
		return
	}
	c.capsuleLogf(slog.LevelInfo, "dns configuration received", "servers", dns)
	if c.cfg.OnDNS != nil && len(dns) > 0 {
		c.cfg.OnDNS(dns)
	}
}

// The budget of the capsule reader's lines: a burst of capsuleLogBurst,
// then capsuleLogRate a second.
const (
	capsuleLogRate  rate.Limit = 1
	capsuleLogBurst            = 8
)

// capsuleLogf logs a line about what the server sent, within the budget;
// the first line after some were dropped says how many (suppressed=N).
// Only the capsule reader calls it.
func (c *Client) capsuleLogf(lvl slog.Level, msg string, args ...any) {
	if !c.log.Enabled(context.Background(), lvl) {
		return
	}
	if !c.capsuleLog.Allow() {
		c.capsuleSuppressed++
		return
	}
	if c.capsuleSuppressed > 0 {
		args = append(args, "suppressed", c.capsuleSuppressed)
		c.capsuleSuppressed = 0
	}
	c.log.Log(context.Background(), lvl, msg, args...)
}

// logList returns the first entries of what a check refused, for a log
// line: a DNS_ASSIGN may name thousands.
func logList(r refused[netip.Addr]) string {
	if len(r) > MaxDNSServers {
		return fmt.Sprintf("%s and %d more", r[:MaxDNSServers], len(r)-MaxDNSServers)
	}
	return r.String()
}

// hostPrefixes returns the addresses of ps as host prefixes, /32 or /128.
func hostPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if a := p.Addr(); !slices.Contains(out, netip.PrefixFrom(a, a.BitLen())) {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return out
}

func (c *Client) hasIPv6() bool {
	for _, a := range c.addresses {
		if a.Addr().Is6() {
			return true
		}
	}
	return false
}

// probeBudget updates budget from quic-go's current datagram size limit,
// which grows with path MTU discovery.
func (c *Client) probeBudget() int {
	if n := quicio.MaxDatagramPayload(c.cfg.Conn); n > 0 {
		c.budget.Store(int64(n - len(c.dgramPrefix)))
	}
	return int(c.budget.Load())
}

// MTU returns the inner MTU the tunnel carries now: the smaller of MaxMTU
// and the datagram budget.
func (c *Client) MTU() int {
	return min(c.cfg.MaxMTU, int(c.budget.Load()))
}

// Addresses returns the assigned addresses the session uses, as host
// prefixes (/32, /128): all of the lease, or its IPv4 part when the path
// cannot carry IPv6's 1280-byte packets.
func (c *Client) Addresses() []netip.Prefix { return c.addresses }

// minMTU is the smallest MTU runMTU sets on the TUN: IPv6's 1280 if the
// lease has an IPv6 address (the TUN may carry it from an earlier session;
// on a smaller link the kernel would delete it), else IPv4's 576.
func (c *Client) minMTU() int {
	if slices.ContainsFunc(c.lease, func(p netip.Prefix) bool { return p.Addr().Is6() }) {
		return minIPv6MTU
	}
	return minIPv4MTU
}

// Lease returns the addresses the server assigned, as host prefixes.
func (c *Client) Lease() []netip.Prefix { return c.lease }

// Excludes returns what is never routed into the tunnel, whatever the
// server advertises: the policy's excludes and host networks and the
// server's address. The caller installs them as throw routes.
func (c *Client) Excludes() []netip.Prefix { return c.throws }

// ipv6MTUWait bounds how long Connect waits for path MTU discovery to make
// room for IPv6's 1280-byte packets.
const ipv6MTUWait = 3 * time.Second

// WaitMTU waits until the tunnel carries inner packets of want bytes (path
// MTU discovery raises the budget of a connection that started small), at
// most d, until ctx is done, or until the budget stopped growing (no growth
// for 20 smoothed RTTs: four of quic-go's probe intervals), and returns the
// budget then.
func (c *Client) WaitMTU(ctx context.Context, want int, d time.Duration) int {
	start := time.Now()
	last, grew := c.probeBudget(), start
	for last < want && time.Since(start) < d && ctx.Err() == nil && c.cfg.Conn.Context().Err() == nil {
		if stall := 20*c.cfg.Conn.ConnectionStats().SmoothedRTT + 200*time.Millisecond; time.Since(grew) > stall {
			break
		}
		c.nudge() // quic-go sends its probes alongside other packets
		time.Sleep(20 * time.Millisecond)
		if b := c.probeBudget(); b > last {
			last, grew = b, time.Now()
		}
	}
	return last
}

// Routes returns the routes the server advertised, as prefixes, inside
// the policy (clientRoutes): at most MaxRoutes, none protocol-scoped, cut
// to the policy's limits; Excludes cut them further.
func (c *Client) Routes() []netip.Prefix {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.routes
}

// DNS returns the DNS servers the server configured, if any yet.
func (c *Client) DNS() []netip.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dns
}

// ClientStats are a client's counters.
type ClientStats struct {
	TxPackets, TxBytes, RxPackets, RxBytes uint64
	Drops                                  map[string]uint64
	// Refused counts what the client refused from the server's capsules,
	// by kind (routes_protocol_scoped, routes_over_cap,
	// routes_outside_policy, dns_servers, address_changes).
	Refused map[string]uint64
	RTT     time.Duration
	Uptime  time.Duration
}

// Stats returns a snapshot of the client's counters.
func (c *Client) Stats() ClientStats {
	st := ClientStats{
		TxPackets: c.stats.txPackets.Load(),
		TxBytes:   c.stats.txBytes.Load(),
		RxPackets: c.stats.rxPackets.Load(),
		RxBytes:   c.stats.rxBytes.Load(),
		RTT:       c.cfg.Conn.ConnectionStats().SmoothedRTT,
		Uptime:    time.Since(c.started),
		Drops:     make(map[string]uint64),
		Refused:   make(map[string]uint64),
	}
	for r := range numDropReasons {
		if v := c.stats.drops[r].Load(); v > 0 {
			st.Drops[r.String()] = v
		}
	}
	for r := range numServerRefusals {
		if v := c.stats.refused[r].Load(); v > 0 {
			st.Refused[serverRefusalNames[r]] = v
		}
	}
	return st
}

// ErrSessionClosed is returned by Run when the server ended the session or
// the connection was lost.
var ErrSessionClosed = errors.New("tunnel closed by the server or the connection was lost")

// Run carries packets between dev and the session until ctx is done (it
// then returns nil) or the session ends (it returns why). It does not close
// dev; the caller must close dev after Run returns for its reader goroutine
// to have exited. Run is Serve on a Tunnel of its own; a client that
// reconnects keeps one Tunnel and serves each new session on it.
func (c *Client) Run(ctx context.Context, dev Device) error {
	return NewTunnel(dev).Serve(ctx, c)
}

// Tunnel owns the client's TUN across sessions: one goroutine reads it and
// hands each batch to the session being served, so a reconnecting client
// keeps its device, addresses and routes. While no session is served,
// what is read is dropped (and counted): nothing leaves outside a tunnel.
//
//	dev.Read ─► Tunnel.runReader ─► Client.sendBatch ─► conn.SendDatagram ─► server
//	server ─► conn.ReceiveDatagram ─► Client.runDown ─(rxRing)─► runTUNWriter ─► dev.Write
type Tunnel struct {
	dev   Device
	cur   atomic.Pointer[Client]
	idle  atomic.Uint64 // packets read while no session was served
	start sync.Once     // the reader starts with the first session
}

// NewTunnel returns a Tunnel on dev. Its reader starts with the first
// Serve and exits when dev is closed.
func NewTunnel(dev Device) *Tunnel { return &Tunnel{dev: dev} }

// Dropped returns how many packets were read while no session was served.
func (t *Tunnel) Dropped() uint64 { return t.idle.Load() }

// Serve carries packets between the tunnel's device and the session c until
// ctx is done (it then returns nil) or the session ends (it returns why).
// One session is served at a time.
func (t *Tunnel) Serve(ctx context.Context, c *Client) error {
	t.cur.Store(c)
	t.start.Do(func() { go t.runReader() })
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Go(func() { errc <- c.runDown(t.dev) })
	wg.Go(func() { c.runMTU(ctx) })
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	case err = <-c.upErr:
	case err = <-c.capsuleErr:
		c.capsuleErr <- err
		if err == nil {
			err = net.ErrClosed
		}
	}
	t.cur.CompareAndSwap(c, nil)
	c.Close()
	// runDown ends with the connection (the caller closes it), runMTU with
	// ctx or the connection.
	go wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	if _, ok := errors.AsType[*quic.StreamError](err); ok {
		return fmt.Errorf("%w: %v", ErrSessionClosed, err)
	}
	if err == nil || isClosed(err) || errors.Is(err, errSessionEnded) {
		if cause := context.Cause(c.cfg.Conn.Context()); cause != nil {
			return fmt.Errorf("%w: %v", ErrSessionClosed, cause)
		}
		return ErrSessionClosed
	}
	return err
}

// runReader reads batches from the TUN until it is closed and hands each
// to the current session.
func (t *Tunnel) runReader() {
	b := newReadBatch(t.dev.BatchSize())
	defer b.release()
	for {
		b.reset()
		n, err := t.dev.Read(b.bufs, b.sizes, Headroom)
		if err != nil {
			if isClosed(err) {
				return
			}
			continue
		}
		if c := t.cur.Load(); c != nil {
			c.sendBatch(t.dev, b, n)
		} else {
			t.idle.Add(uint64(n))
		}
	}
}

// errSessionEnded stops the data path when the request stream has ended.
var errSessionEnded = errors.New("session ended")

// ownAddr reports whether a is one of the assigned addresses, exactly: the
// only valid source of a packet we send and destination of one we receive
// (RFC 9484 §4.7.1). The client uses one address of each assigned prefix
// and puts only that one on the TUN, so a destination elsewhere in the
// prefix is not ours. At most 2×MaxAssignedAddresses are scanned.
// Destinations are the server's to police (it answers with ICMP); the
// TUN's routes send only advertised prefixes here anyway.
func (c *Client) ownAddr(a netip.Addr) bool {
	for _, p := range c.addresses {
		if p.Addr() == a {
			return true
		}
	}
	return false
}

// sendBatch sends the n packets of a TUN read to the server. The HTTP
// datagram is framed in the headroom in front of each packet, so nothing is
// copied before quic-go's own copy. A packet over the datagram budget is
// answered with ICMP Packet Too Big into dev. A send failure other than the
// size ends the session (upErr).
func (c *Client) sendBatch(dev Device, b *readBatch, n int) {
	prefix := c.dgramPrefix
	for i := range n {
		pkt := b.bufs[i][Headroom : Headroom+b.sizes[i]]
		h, ok := parseIPHeader(pkt)
		if !ok {
			c.stats.drops[dropMalformed].Add(1)
			continue
		}
		if !c.ownAddr(h.src) {
			switch {
			case h.src.IsLinkLocalUnicast() || h.src.IsUnspecified():
				c.stats.drops[dropLinkLocal].Add(1)
			case len(c.addresses) < len(c.lease):
				// IPv6 is leased but off: the path cannot carry its
				// 1280-byte packets.
				c.stats.drops[dropTooBig].Add(1)
			default:
				c.stats.drops[dropSourceSpoof].Add(1)
			}
			continue
		}
		budget := int(c.budget.Load())
		if len(pkt) <= budget {
			d := b.bufs[i][Headroom-len(prefix) : Headroom+b.sizes[i]]
			copy(d, prefix)
			err := c.cfg.Conn.SendDatagram(d)
			if err == nil {
				c.stats.txPackets.Add(1)
				c.stats.txBytes.Add(uint64(len(pkt)))
				continue
			}
			if _, tooBig := errors.AsType[*quic.DatagramTooLargeError](err); !tooBig {
				c.stats.drops[dropSendFailed].Add(1)
				select {
				case c.upErr <- err:
				default:
				}
				continue
			}
			// The budget shrank (path MTU): ask quic-go for it.
			budget = c.probeBudget()
		}
		c.stats.drops[dropTooBig].Add(1)
		var icmpBuf [Headroom + maxICMPv6Len]byte
		if m := appendICMPError(icmpBuf[:Headroom], pkt, icmpTooBig, budget, h.dst); len(m) > Headroom {
			_, _ = dev.Write([][]byte{m}, Headroom)
		}
	}
}

// runDown reads the connection's datagrams (the client is their only
// reader) and copies the session's packets into a ring; runTUNWriter
// writes whatever has accumulated in one batch. quic-go queues at most 128
// datagrams and drops the rest, so this goroutine does nothing else.
func (c *Client) runDown(dev Device) error {
	r := newRxRing()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.runTUNWriter(dev, r)
	}()
	defer func() {
		r.close()
		<-done
		r.free()
	}()
	ctx := c.str.Context()
	for {
		d, err := c.cfg.Conn.ReceiveDatagram(ctx)
		if err != nil {
			if c.cfg.Conn.Context().Err() == nil {
				return errSessionEnded
			}
			return err
		}
		pkt, ok := c.checkDatagram(d)
		if !ok {
			continue
		}
		buf := r.next()
		if buf == nil {
			return net.ErrClosed
		}
		r.publish(copy(buf[Headroom:], pkt))
	}
}

// checkDatagram returns the packet a datagram from the server carries, if
// it is for this session (quarter stream ID), has context ID 0, is a
// well-formed IP packet addressed to us, from a source that is neither
// bogus nor local, and no ICMP message that configures a link
// (clientcheck.go).
func (c *Client) checkDatagram(d []byte) ([]byte, bool) {
	prefix := c.dgramPrefix
	if len(d) < len(prefix) || string(d[:len(prefix)-1]) != string(prefix[:len(prefix)-1]) {
		c.stats.drops[dropUnknownStream].Add(1)
		return nil, false
	}
	if d[len(prefix)-1] != 0 {
		c.stats.drops[dropContextID].Add(1)
		return nil, false
	}
	pkt := d[len(prefix):]
	h, ok := parseIPHeader(pkt)
	if !ok || h.totalLen > maxMTU {
		c.stats.drops[dropMalformed].Add(1)
		return nil, false
	}
	if !c.ownAddr(h.dst) {
		c.stats.drops[dropNoSession].Add(1)
		return nil, false
	}
	if bogusSource(h.src) {
		c.stats.drops[dropSourceBogus].Add(1)
		return nil, false
	}
	if c.localSource(h.src) {
		c.stats.drops[dropSourceLocal].Add(1)
		return nil, false
	}
	if linkControlICMP(pkt, h) {
		c.stats.drops[dropLinkControl].Add(1)
		return nil, false
	}
	return pkt[:h.totalLen], true
}

// runTUNWriter writes the packets runDown collects to the TUN in batches.
// It returns when the ring is closed.
func (c *Client) runTUNWriter(dev Device, r *rxRing) {
	bufs := make([][]byte, min(dev.BatchSize()*4, rxRingLen))
	for {
		n := r.drain(bufs)
		if n == 0 {
			return
		}
		var bytes uint64
		for _, b := range bufs[:n] {
			bytes += uint64(len(b) - Headroom)
		}
		if _, err := dev.Write(bufs[:n], Headroom); err != nil {
			c.stats.drops[dropTUNWrite].Add(tunWriteDrops(err, n))
		}
		c.stats.rxPackets.Add(uint64(n))
		c.stats.rxBytes.Add(bytes)
		clear(bufs[:n])
		r.release(n)
	}
}

// runMTU follows the datagram budget as path MTU discovery raises it (often
// in the first seconds) and reports the usable MTU to SetMTU. It returns
// when ctx is done or the connection ends.
func (c *Client) runMTU(ctx context.Context) {
	if c.cfg.SetMTU == nil {
		return
	}
	last := 0
	apply := func(nudge bool) {
		if nudge && c.MTU() < c.cfg.MaxMTU {
			c.nudge()
		}
		c.probeBudget()
		if mtu := c.MTU(); mtu != last && mtu >= c.minMTU() {
			if err := c.cfg.SetMTU(mtu); err != nil {
				c.log.Warn("set tun mtu", "mtu", mtu, "err", err)
				return
			}
			c.log.Info("tun mtu set", "mtu", mtu)
			last = mtu
		}
	}
	apply(false)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-c.cfg.Conn.Context().Done():
			return
		case <-t.C:
		}
		apply(i < 50)
		if i == 50 { // after the first 10 s, path MTU changes are rare
			t.Reset(5 * time.Second)
		}
	}
}

// nudge sends an HTTP/3 datagram on the session's stream with context ID
// 2, which no one registered: the server drops it (RFC 9484 §6). It exists
// to give quic-go a packet to send, because quic-go only sends path MTU
// probes alongside other packets and an idle new tunnel would otherwise
// stay at the initial packet size until its first keep-alive.
func (c *Client) nudge() {
	var b [10]byte
	n := copy(b[:], c.dgramPrefix)
	b[n-1] = 2
	_ = c.cfg.Conn.SendDatagram(b[:n])
}

// Close ends the session: it stops reading the request stream and ends
// our side of it (RFC 9484 §3: the session ends with the stream). The QUIC
// connection stays open.
func (c *Client) Close() error {
	c.str.CancelRead(quic.StreamErrorCode(http3.ErrCodeNoError))
	return c.str.Close()
}
