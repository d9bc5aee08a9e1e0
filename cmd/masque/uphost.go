package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/masque-vpn/masque/quicio"
	"github.com/masque-vpn/masque/tun"
	"github.com/masque-vpn/masque/tunnel"
)

// upHost is masque up's side of the tunnel (tunnel.Host): the TUN, policy
// routing, the kill switch and DNS, each recorded in the state file
// before it is made. The Agent calls Up with the first session, Move when
// a later one assigns other addresses; runUp calls close at the end.
type upHost struct {
	c         *upConfig
	statePath string
	routing   *tun.Routing
	status    *statusServer
	out       io.Writer
	logger    *slog.Logger

	// dnsUpdates carries DNS configurations from the server, latest
	// first, to runDNS once the state file records what to restore.
	dnsUpdates chan []netip.Addr

	stMu    sync.Mutex // guards st once the DNS goroutine runs
	st      *tun.State
	written bool   // st is on disk: there is something to undo
	blocked bool   // the run started with the kill switch up (blocked.go)
	up      bool   // the host was set up for the tunnel
	ksOn    bool   // the kill switch is up
	stopDNS func() // stops the DNS goroutine, once started

	devMu sync.Mutex
	dev   *tun.Device // once Up created it

	// routeUpdates carries a session whose routes changed mid-session
	// (ClientConfig.OnRoutes) to runRoutes, the newest only.
	routeUpdates chan *tunnel.Client
	stopRoutes   func()     // stops runRoutes, once started
	routeMu      sync.Mutex // guards routing's Routes and Excludes once runRoutes runs
	current      *tunnel.Client
}

// onEvent follows the Agent's sessions: a new one's routes may differ
// from those installed, whether or not its addresses do.
func (h *upHost) onEvent(e tunnel.AgentEvent) {
	if e.Kind != tunnel.AgentBack {
		return
	}
	h.routeMu.Lock()
	h.current = e.Client
	h.routeMu.Unlock()
	h.onRoutes(e.Client)
}

// routeInterval spaces the route updates a server can cause: a flood of
// advertisements costs a table rewrite a second at most.
const routeInterval = time.Second

// onRoutes takes a session's new routes (ClientConfig.OnRoutes): the
// newest waits for runRoutes, an older one gives way.
func (h *upHost) onRoutes(c *tunnel.Client) {
	for {
		select {
		case h.routeUpdates <- c:
			return
		default:
		}
		select {
		case <-h.routeUpdates:
		default:
		}
	}
}

// runRoutes applies the routes of the current session when its server
// advertises new ones, at most once a routeInterval, until ctx is done.
func (h *upHost) runRoutes(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-h.routeUpdates:
			h.routeMu.Lock()
			current := c == h.current
			h.routeMu.Unlock()
			if current {
				if err := h.setRoutes(c); err != nil {
					h.logger.Warn("new routes from the server not applied", "err", err)
				} else {
					h.logger.Info("routes updated", "routes", logPrefixes(h.routing.Routes))
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(routeInterval):
		}
	}
}

// setRoutes installs c's routes (inside the policy, as Up does) in place
// of the ones installed, recorded first.
func (h *upHost) setRoutes(c *tunnel.Client) error {
	h.routeMu.Lock()
	defer h.routeMu.Unlock()
	routes := familiesWith(c.Routes(), c.Addresses())
	if slices.Equal(routes, h.routing.Routes) && slices.Equal(c.Excludes(), h.routing.Excludes) {
		return nil
	}
	next := *h.routing
	next.Routes, next.Excludes = routes, c.Excludes()
	// The state names the union until the old routes are gone: Undo
	// flushes the whole table anyway.
	h.stMu.Lock()
	h.st.Routing = &next
	err := tun.WriteState(h.statePath, h.st)
	h.stMu.Unlock()
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := next.Replace(h.routing); err != nil {
		return fmt.Errorf("routes: %w", err)
	}
	*h.routing = next
	h.status.setRoutes(next.Routes)
	return nil
}

// setMTU follows the datagram budget (ClientConfig.SetMTU): the TUN
// starts at what a datagram carries and grows as path MTU discovery finds
// room.
func (h *upHost) setMTU(mtu int) error {
	h.devMu.Lock()
	dev := h.dev
	h.devMu.Unlock()
	if dev == nil {
		return nil // Up creates it at the session's MTU
	}
	return dev.SetMTU(mtu)
}

// onDNS takes a DNS configuration from the server (ClientConfig.OnDNS):
// the newest waits for runDNS, an older one gives way.
func (h *upHost) onDNS(servers []netip.Addr) {
	if !h.c.acceptDNS {
		return
	}
	for {
		select {
		case h.dnsUpdates <- servers:
			return
		default: // full: the older configuration gives way
		}
		select {
		case <-h.dnsUpdates:
		default:
		}
	}
}

// InnerMTU is the largest inner packet the TUN takes now.
func (h *upHost) InnerMTU() int {
	h.devMu.Lock()
	defer h.devMu.Unlock()
	if h.dev == nil {
		return h.c.mtu
	}
	if mtu, err := h.dev.MTU(); err == nil {
		return min(mtu, h.c.mtu)
	}
	return h.c.mtu
}

// Up sets the host up for the first session: the routes the server
// advertised inside the policy, the kill switch, the TUN (an end host,
// not a LAN) with the session's addresses, DNS.
func (h *upHost) Up(ctx context.Context, srv tunnel.AgentServer, client *tunnel.Client) (tunnel.Device, error) {
	c, st, routing := h.c, h.st, h.routing
	// The routes the server advertised, inside the policy (--route cuts
	// them); the excludes, the host's networks and the server's address
	// become throw routes, so they win over any route.
	routing.Routes = familiesWith(client.Routes(), client.Addresses())
	routing.Excludes = client.Excludes()
	if len(c.routes) > 0 && len(routing.Routes) == 0 {
		h.logger.Warn("the server advertises none of --route: nothing is routed into the tunnel", "route", joinPrefixes(c.routes))
	}
	killSwitch := c.killSwitch
	if !c.killSwitchSet {
		killSwitch = len(c.routes) == 0 // full tunnel
	}

	// Crash safety: record what is about to change before changing it.
	st.Tun = c.tun
	st.Routing = routing
	if ks := c.slot.KillSwitchTable(); killSwitch && !slices.Contains(st.NFTables, ks) {
		st.NFTables = append(st.NFTables, ks)
	}
	if gw, ok := gatewayTable(c, killSwitch); ok && !slices.Contains(st.NFTables, gw) {
		st.NFTables = append(st.NFTables, gw)
	}
	if err := tun.WriteState(h.statePath, st); err != nil {
		return nil, fmt.Errorf("write state: %w", err)
	}
	h.written = true
	// The kill switch goes up before any route moves traffic, and stays
	// until the routes are gone (Undo deletes its table). After a corrupt
	// state file it replaces the blocking one, the same table, atomically.
	if killSwitch {
		ks := killSwitchConfig(c, routingFwMark(routing))
		if _, err := tun.NewKillSwitch(ks); err != nil {
			return nil, err
		}
		h.logger.Info("kill switch on", "allow", ks.Allow)
		h.ksOn = true
	}
	if err := allowForward(c, killSwitch, h.logger); err != nil {
		return nil, err
	}
	// The TUN starts at what a datagram carries now; the session raises
	// it towards --mtu as QUIC's path MTU discovery finds room.
	minMTU := tun.MinMTU
	if slices.ContainsFunc(client.Addresses(), func(p netip.Prefix) bool { return p.Addr().Is6() }) {
		minMTU = tun.MinIPv6MTU
	}
	// The TUN is not a LAN (EndHost): no router advertisements,
	// autoconfiguration, redirects or link-local address on it, strict
	// reverse-path filtering, nothing forwarded from it (but, with
	// --allow-forward, the replies to the hosts behind this one).
	dev, err := tun.Create(tun.Config{Name: c.tun, MTU: max(client.MTU(), minMTU), Addrs: client.Addresses(), EndHost: true, AllowForward: c.allowForward})
	if err != nil {
		return nil, fmt.Errorf("create TUN %s: %w", c.tun, err)
	}
	h.devMu.Lock()
	h.dev = dev
	h.devMu.Unlock()
	// The TUN's sysctls go with the link, which goes with this process
	// (it is not persistent), so they are recorded only now; Undo skips
	// those of a link that is gone.
	if recordSysctls(st, dev.Sysctls()) {
		if err := tun.WriteState(h.statePath, st); err != nil {
			return nil, fmt.Errorf("write state: %w", err)
		}
	}
	if err := routing.Apply(); err != nil {
		return nil, fmt.Errorf("routes: %w", err)
	}
	if h.blocked && !killSwitch {
		// The tunnel is up: the blocking state has served its purpose and
		// the user asked for no kill switch. Delete first, then record:
		// a crash in between leaves a state naming a table that is gone,
		// which Undo takes in its stride.
		ks := c.slot.KillSwitchTable()
		if err := tun.DeleteTable(ks); err != nil {
			return nil, err
		}
		h.stMu.Lock()
		st.NFTables = slices.DeleteFunc(st.NFTables, func(t string) bool { return t == ks })
		err := tun.WriteState(h.statePath, st)
		h.stMu.Unlock()
		if err != nil {
			return nil, fmt.Errorf("write state: %w", err)
		}
		h.logger.Info("kill switch off: the tunnel is up")
	}
	h.up = true
	h.routeMu.Lock()
	h.current = client
	h.routeMu.Unlock()
	routesCtx, cancelRoutes := context.WithCancel(ctx)
	var routesWG sync.WaitGroup
	routesWG.Go(func() { h.runRoutes(routesCtx) })
	h.stopRoutes = func() { cancelRoutes(); routesWG.Wait() }
	h.status.setUp(srv.Addr, client, routing.Routes, killSwitch)
	fmt.Fprintf(h.out, "up: server=%s addresses=%s tun=%s\n", srv.Addr, joinPrefixes(client.Addresses()), c.tun)
	h.logger.Info("tunnel up", "server", srv.Addr, "addresses", client.Addresses(), "routes", logPrefixes(routing.Routes), "offloads", dev.Offloads())

	// DNS settings for systemd-resolved belong to the TUN's link, so
	// applying waits for the TUN (updates meanwhile wait in dnsUpdates),
	// and they are reverted before the TUN goes (resolved would forget
	// them then anyway). Until runDNS returns it alone touches st.
	if c.acceptDNS {
		dnsCtx, cancelDNS := context.WithCancel(ctx)
		var dnsWG sync.WaitGroup
		dc := c.dnsConfig()
		dc.routes = routing.Routes
		dnsWG.Go(func() { runDNS(dnsCtx, st, h.statePath, dc, h.dnsUpdates, h.logger) })
		h.stopDNS = func() { cancelDNS(); dnsWG.Wait() }
	}
	return dev, nil
}

// Move has the host follow a session that assigned other addresses: the
// TUN's addresses, and the routes the new server advertises, while the
// kill switch stays (it names the TUN, not the addresses) and the TUN
// goes on existing, so nothing leaks during the move.
func (h *upHost) Move(srv tunnel.AgentServer, old, client *tunnel.Client) error {
	h.devMu.Lock()
	dev := h.dev
	h.devMu.Unlock()
	if err := dev.SetAddrs(client.Addresses()); err != nil {
		return err
	}
	h.routeMu.Lock()
	h.current = client
	h.routeMu.Unlock()
	return h.setRoutes(client)
}

// close ends what Up started, once the Agent is done: DNS (reverting
// systemd-resolved's settings while the TUN still exists), then the TUN.
func (h *upHost) close(retErr *error) {
	h.stopRoutes()
	h.stopDNS()
	if h.st.Resolved != nil {
		if err := h.st.Resolved.Revert(); err != nil {
			*retErr = errors.Join(*retErr, err)
		}
	}
	h.devMu.Lock()
	defer h.devMu.Unlock()
	if h.dev != nil {
		h.dev.Close()
	}
}

// serverDialer dials the servers for the Agent, with the tunnel's mark on
// the socket. Reconnects dial the address the first dial of a server
// reached, under the name that dial checked the certificate for: with the
// kill switch on, a name may not resolve again. A run that starts with the
// host blocked resolves names from marked sockets (resolveMarked).
type serverDialer struct {
	c             *upConfig
	mark          uint32
	resolveMarked bool
	logger        *slog.Logger

	mu      sync.Mutex
	reached map[string]string // server as given → address dialled
}

func (d *serverDialer) dial(ctx context.Context, s tunnel.AgentServer) (*quicio.ClientConn, error) {
	addr, tc, err := d.target(ctx, s)
	if err != nil {
		return nil, err
	}
	o := d.c.serverOptions
	o.server = addr
	qc, err := o.dial(ctx, tc, d.mark, d.logger)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	if d.reached == nil {
		d.reached = map[string]string{}
	}
	d.reached[s.Addr] = qc.RemoteAddr().String()
	d.mu.Unlock()
	return qc, nil
}

// target returns the address to dial for s and the TLS configuration: the
// address an earlier dial reached, or s's host resolved from marked sockets
// when the host is blocked, under the host's name; else s as it is.
func (d *serverDialer) target(ctx context.Context, s tunnel.AgentServer) (string, *tls.Config, error) {
	tc := d.c.tls
	host, _, err := net.SplitHostPort(s.Addr)
	if err != nil {
		return "", nil, err
	}
	_, err = netip.ParseAddr(host)
	named := err != nil
	d.mu.Lock()
	addr, known := d.reached[s.Addr]
	d.mu.Unlock()
	if !known {
		addr = s.Addr
		if named && d.resolveMarked {
			rctx, cancel := context.WithTimeout(ctx, d.c.connectTimeout)
			a, err := resolveMarked(rctx, s.Addr, d.mark)
			cancel()
			if err != nil {
				return "", nil, err
			}
			addr = a
		}
	}
	if named && addr != s.Addr && tc.ServerName == "" {
		tc = tc.Clone()
		tc.ServerName = host // the certificate names the host, not the address
	}
	return addr, tc, nil
}

// routing is the instance's policy routing, its slot's table, mark and
// rule priorities, on its TUN.
func (c *upConfig) routing() *tun.Routing {
	r := c.slot.Routing()
	r.Link = c.tun
	return &r
}

// wantKillSwitch is whether the run puts the kill switch up: --kill-switch
// if given, else for a full tunnel.
func (c *upConfig) wantKillSwitch() bool {
	if c.killSwitchSet {
		return c.killSwitch
	}
	return len(c.routes) == 0
}

// checkTUNFree refuses a TUN name that a link has already: a TUN goes
// with the process that created it, so the link is a running program's
// (another masque instance's, wireguard-go's), and masque up must not
// take it over, or delete it on its way out.
func checkTUNFree(name string) error {
	if _, err := net.InterfaceByName(name); err != nil {
		return nil
	}
	if pid, ok := tun.TUNOwner(name); ok {
		return fmt.Errorf("TUN %s is in use by pid %d (%s): give this instance another --tun, or stop that one", name, pid, procComm(pid))
	}
	return fmt.Errorf("a link named %s exists already: give this instance another --tun", name)
}

// procComm is pid's command name, for a line about it.
func procComm(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}
