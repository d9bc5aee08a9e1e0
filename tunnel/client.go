package tunnel

import (
	"context"
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

	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/yosida95/uritemplate/v3"
)

// DefaultClientMTU is the default cap on the client's inner MTU.
const DefaultClientMTU = 1400

// minIPv6MTU is the IPv6 minimum link MTU, which a CONNECT-IP tunnel that
// carries IPv6 must support (RFC 9484 §10.1).
const minIPv6MTU = 1280

// DefaultSetupTimeout bounds how long Connect waits for the server's
// response and its address assignment.
const DefaultSetupTimeout = 10 * time.Second

// ClientConfig configures [Connect].
type ClientConfig struct {
	// Conn is an established QUIC connection to the server, with datagrams.
	// The Client does not close it.
	Conn *quic.Conn
	// Authority is the request's :authority, "host:port" of the server as
	// the user named it.
	Authority string
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
	// Logger receives lifecycle logs; nil discards them.
	Logger *slog.Logger
}

// RefusedError is returned by [Connect] when the server answers the
// CONNECT-IP request with a non-2xx status.
type RefusedError struct {
	Status      int
	ProxyStatus string // the Proxy-Status header, if any
}

func (e *RefusedError) Error() string {
	s := fmt.Sprintf("server refused the tunnel: %d %s", e.Status, strings.ToLower(http.StatusText(e.Status)))
	if e.ProxyStatus != "" {
		s += " (" + e.ProxyStatus + ")"
	}
	return s
}

// Client is one CONNECT-IP session to a server.
type Client struct {
	cfg  ClientConfig
	log  *slog.Logger
	conn *connectip.Conn
	h3   *http3.ClientConn

	addresses []netip.Prefix
	stats     clientCounters
	started   time.Time
	budget    atomic.Int64 // largest inner packet a datagram carries now

	mu     sync.Mutex // guards routes and dns
	routes []netip.Prefix
	dns    []netip.Addr
}

type clientCounters struct {
	txPackets, txBytes, rxPackets, rxBytes atomic.Uint64
	drops                                  [numDropReasons]atomic.Uint64
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

	tr := &http3.Transport{EnableDatagrams: true}
	h3 := tr.NewClientConn(cfg.Conn)
	tmpl, err := uritemplate.New("https://" + cfg.Authority + ipPath(ipScope{}))
	if err != nil {
		return nil, fmt.Errorf("connect-ip: request URI: %w", err)
	}
	// The request's context must outlive setup: it is the stream's.
	req, err := connectip.NewRequest(context.WithoutCancel(ctx), tmpl)
	if err != nil {
		return nil, err
	}
	if cfg.Token != "" {
		req.Header().Set("Authorization", "Bearer "+cfg.Token)
	}
	type result struct {
		conn *connectip.Conn
		rsp  *http.Response
		err  error
	}
	done := make(chan result, 1)
	go func() {
		c, rsp, err := connectip.NewClientConn(h3).Dial(req)
		done <- result{c, rsp, err}
	}()
	var res result
	select {
	case res = <-done:
	case <-ctx.Done():
		cfg.Conn.CloseWithError(0x10c, "setup timeout") // H3_REQUEST_CANCELLED
		<-done
		return nil, fmt.Errorf("connect-ip: no response from server within %s", cfg.SetupTimeout)
	}
	if res.err != nil {
		if res.rsp != nil {
			return nil, &RefusedError{Status: res.rsp.StatusCode, ProxyStatus: res.rsp.Header.Get("Proxy-Status")}
		}
		return nil, fmt.Errorf("connect-ip: %w", res.err)
	}
	c := &Client{cfg: cfg, log: cfg.Logger.With("component", "tunnel"), conn: res.conn, h3: h3}

	assigned, err := res.conn.ReceiveAddressAssignment(ctx)
	if err != nil {
		res.conn.Close()
		return nil, fmt.Errorf("connect-ip: waiting for address assignment: %w", err)
	}
	for _, a := range assigned {
		if !a.Rejected() {
			c.addresses = append(c.addresses, a.IPPrefix)
		}
	}
	if len(c.addresses) == 0 {
		res.conn.Close()
		return nil, errors.New("connect-ip: server assigned no address")
	}
	// The route advertisement follows the assignment; connect-ip-go drops
	// packets to destinations outside the advertised routes, so wait for it.
	routes, err := res.conn.Routes(ctx)
	if err != nil {
		res.conn.Close()
		return nil, fmt.Errorf("connect-ip: waiting for routes: %w", err)
	}
	c.routes = routesToPrefixes(routes)
	c.probeBudget()
	if c.hasIPv6() && c.budget.Load() < minIPv6MTU {
		res.conn.Close()
		return nil, fmt.Errorf("connect-ip: the path carries inner packets of at most %d bytes, below the 1280 IPv6 needs (RFC 9484 §10.1)", c.budget.Load())
	}
	c.started = time.Now()
	return c, nil
}

func (c *Client) hasIPv6() bool {
	for _, a := range c.addresses {
		if a.Addr().Is6() {
			return true
		}
	}
	return false
}

// probeBuf is larger than any QUIC datagram: offering it to SendDatagram
// only asks quic-go for the current budget; nothing is sent or copied.
var probeBuf [1 << 16]byte

// datagramOverhead is what precedes an inner packet in the DATAGRAM
// payload: the quarter stream ID of the request stream (one byte for the
// first streams of a connection) and context ID 0 (RFC 9297 §2.1, RFC 9484
// §6).
const datagramOverhead = 2

// probeBudget updates budget from quic-go's current datagram size limit,
// which grows with path MTU discovery.
func (c *Client) probeBudget() int {
	err := c.cfg.Conn.SendDatagram(probeBuf[:])
	if e, ok := errors.AsType[*quic.DatagramTooLargeError](err); ok {
		c.budget.Store(e.MaxDatagramPayloadSize - datagramOverhead)
	}
	return int(c.budget.Load())
}

// MTU returns the inner MTU the tunnel carries now: the smaller of MaxMTU
// and the datagram budget.
func (c *Client) MTU() int {
	return min(c.cfg.MaxMTU, int(c.budget.Load()))
}

// Addresses returns the addresses the server assigned.
func (c *Client) Addresses() []netip.Prefix { return c.addresses }

// Routes returns the routes the server advertised, as prefixes.
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
	RTT                                    time.Duration
	Uptime                                 time.Duration
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
	}
	for r := range numDropReasons {
		if v := c.stats.drops[r].Load(); v > 0 {
			st.Drops[r.String()] = v
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
// to have exited.
//
//	dev.Read ─► runUp ─► conn.WritePacket ─► server
//	server ─► conn.ReadPacket ─► runDown ─► dev.Write
func (c *Client) Run(ctx context.Context, dev Device) error {
	errc := make(chan error, 3)
	var wg sync.WaitGroup
	wg.Go(func() { errc <- c.runUp(dev) })
	wg.Go(func() { errc <- c.runDown(dev) })
	wg.Go(func() { c.runUpdates(ctx) })
	wg.Go(func() { c.runMTU(ctx) })
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	c.conn.Close()
	// runUp may be blocked in dev.Read: it returns once the caller closes
	// dev, so it is not waited for here. runDown and runUpdates end with
	// the connect-ip conn.
	go wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	if err == nil || isClosed(err) {
		if cause := context.Cause(c.cfg.Conn.Context()); cause != nil {
			return fmt.Errorf("%w: %v", ErrSessionClosed, cause)
		}
		return ErrSessionClosed
	}
	return err
}

// runUp reads batches from the TUN and sends each packet to the server.
func (c *Client) runUp(dev Device) error {
	b := newReadBatch(dev.BatchSize())
	defer b.release()
	var icmpBuf [Headroom + maxICMPv6Len]byte
	icmpBufs := [][]byte{nil}
	for {
		b.reset()
		n, err := dev.Read(b.bufs, b.sizes, Headroom)
		if err != nil {
			if isClosed(err) {
				return net.ErrClosed
			}
			continue
		}
		for i := range n {
			pkt := b.bufs[i][Headroom : Headroom+b.sizes[i]]
			budget := int(c.budget.Load())
			var icmp []byte
			if len(pkt) <= budget {
				icmp, err = c.conn.WritePacket(pkt)
				if err != nil {
					return err
				}
				if icmp != nil {
					// connect-ip-go answers with an MTU of 1280; ask
					// quic-go for the real budget and answer with that.
					budget = c.probeBudget()
				}
			}
			if len(pkt) > budget || icmp != nil {
				c.stats.drops[dropTooBig].Add(1)
				if h, ok := parseIPHeader(pkt); ok {
					m := appendICMPError(icmpBuf[:Headroom], pkt, icmpTooBig, budget, h.dst)
					if len(m) > Headroom {
						icmpBufs[0] = m
						_, _ = dev.Write(icmpBufs, Headroom)
					}
				}
				continue
			}
			c.stats.txPackets.Add(1)
			c.stats.txBytes.Add(uint64(len(pkt)))
		}
	}
}

// runDown receives packets from the server and writes them to the TUN.
// connect-ip-go's ReadPacket returns one packet per call and quic-go drops
// datagrams once 32 wait on the stream, so the reading goroutine does
// nothing but copy packets into a ring; runTUNWriter writes whatever has
// accumulated in one batch.
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
	for {
		buf := r.next()
		if buf == nil {
			return net.ErrClosed
		}
		n, err := c.conn.ReadPacket(buf[Headroom:])
		if err != nil {
			return err
		}
		r.publish(n)
	}
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
			c.stats.drops[dropTUNWrite].Add(1)
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
		if mtu := c.MTU(); mtu != last && mtu >= minIPv6MTU {
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

// nudgeDatagram is an HTTP/3 datagram on the first request stream (quarter
// stream ID 0: the CONNECT-IP stream is the connection's only request)
// with context ID 2, which no one registered: the server drops it
// (RFC 9484 §6). It exists to give quic-go a packet to send, because
// quic-go only sends path MTU probes alongside other packets and an idle
// new tunnel would otherwise stay at the initial packet size until its
// first keep-alive.
var nudgeDatagram = []byte{0x00, 0x02}

func (c *Client) nudge() { _ = c.cfg.Conn.SendDatagram(nudgeDatagram) }

// runUpdates follows route and DNS updates from the server.
func (c *Client) runUpdates(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			routes, err := c.conn.Routes(ctx)
			if err != nil {
				return
			}
			c.mu.Lock()
			c.routes = routesToPrefixes(routes)
			c.mu.Unlock()
			c.log.Info("routes updated", "routes", len(routes))
		}
	})
	wg.Go(func() {
		for {
			cfgs, err := c.conn.ReceiveDNSConfiguration(ctx)
			if err != nil {
				return
			}
			var dns []netip.Addr
			for _, cfg := range cfgs {
				for _, ns := range cfg.Nameservers {
					dns = append(dns, ns.IPv4Addresses...)
					dns = append(dns, ns.IPv6Addresses...)
				}
			}
			c.mu.Lock()
			c.dns = dns
			c.mu.Unlock()
			c.log.Info("dns configuration received", "servers", dns)
		}
	})
	wg.Wait()
}

// Close ends the session. The QUIC connection stays open.
func (c *Client) Close() error { return c.conn.Close() }
