package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"github.com/masque-vpn/masque/quicio"
	"io/fs"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/masque-vpn/masque/tun"
	"github.com/masque-vpn/masque/tunnel"
	"github.com/spf13/cobra"
)

const (
	defaultTun            = "masque0"
	defaultMTU            = 1400
	defaultConnectTimeout = 10 * time.Second
)

// upOptions are the flags of masque up.
type upOptions struct {
	serverOptions
	instance string // the profile's name, or defaultInstance
	routes   []string
	excludes []string
	template string
	metrics  string
	tun      string
	mtu      int
	stateDir string
	logLevel string
	// killSwitch is --kill-switch; killSwitchSet says whether the user
	// gave it (unset: on for a full tunnel).
	killSwitch, killSwitchSet bool
	allowLAN                  bool
	allowForward              bool
	allowLocalOverlap         bool
	reconnect                 bool
	// acceptDNS is --accept-dns; acceptDNSSet says whether the user gave
	// it (unset: on for a full tunnel, off with --route).
	acceptDNS, acceptDNSSet bool
	dnsMode                 string
}

// upConfig is a validated upOptions.
type upConfig struct {
	upOptions
	authority string
	token     string
	tls       *tls.Config
	routes    []netip.Prefix
	excludes  []netip.Prefix
}

func newUpCmd() *cobra.Command {
	var (
		o  upOptions
		pf profileFlags
	)
	cmd := &cobra.Command{
		Use:   "up [NAME] [flags]",
		Short: "Bring the tunnel up in the foreground (full tunnel by default)",
		Example: `  masque up work                     # the profile /etc/masque/work.conf
  masque up --config ./work.conf      # a profile elsewhere (instance "work")
  masque up --server vpn.example.com:443 --ca ca.crt --token-file token
  masque up work --route 10.0.0.0/8  # a flag overrides the profile`,
		Long: `Connects to a masqued server over CONNECT-IP, creates a TUN device with the
addresses the server assigns, and routes traffic into it: everything the server
advertises (a full tunnel) unless --route narrows it. The tunnel's own QUIC
packets carry a firewall mark that bypasses the tunnel's routing table, like
wg-quick. Ctrl-C (or SIGTERM) restores everything; after a crash, masque down does.

A profile (NAME.conf in --config-dir, or --config FILE) is a TOML file whose
keys are these flags' names (server = "vpn.example.com:443", route =
["10.0.0.0/8"], kill-switch = false); MASQUE_<FLAG> variables (MASQUE_TOKEN_FILE)
come next, and flags override both. The profile's name names the instance:
its state directory (/run/masque/NAME), its TUN (masque-NAME; masque0 for the
default instance) and its routing table, mark and kill switch, which no
other instance touches.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, path, err := pf.resolve(args, true)
			if err != nil {
				return err
			}
			if err := checkProfileTrust(path); err != nil {
				return err
			}
			if err := applyProfile(cmd.Flags(), path, os.Environ()); err != nil {
				return err
			}
			o.instance = name
			f := cmd.Flags()
			o.killSwitchSet = f.Changed("kill-switch")
			o.acceptDNSSet = f.Changed("accept-dns")
			if !f.Changed("state-dir") {
				o.stateDir = instanceStateDir(name)
			}
			if !f.Changed("tun") {
				o.tun = instanceTun(name)
			}
			cfg, err := o.validate()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runUp(ctx, cmd, cfg)
		},
	}
	f := cmd.Flags()
	o.addFlags(f)
	f.StringArrayVar(&o.routes, "route", nil, "route only this prefix into the tunnel (repeatable; default: what the server advertises)")
	f.StringArrayVar(&o.excludes, "exclude", nil, "keep this prefix out of the tunnel (repeatable)")
	f.StringVar(&o.template, "template", "", "the server's CONNECT-IP URI template, e.g. https://198.18.1.2:4433/.well-known/masque/ip/{target}/{ipproto}/ (its host is the request's :authority, and the server to dial without --server)")
	pf.addFlags(f, true)
	f.StringVar(&o.metrics, "metrics", "", "serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9091): state, bytes, packets, drops, refusals, reconnects, RTT")
	f.StringVar(&o.tun, "tun", defaultTun, "TUN device name (default masque0, or masque-NAME for profile NAME)")
	f.IntVar(&o.mtu, "mtu", defaultMTU, "TUN MTU")
	f.StringVar(&o.stateDir, "state-dir", instanceStateDir(defaultInstance), "directory for crash-recovery state and the status socket (default /run/masque/NAME)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.BoolVar(&o.killSwitch, "kill-switch", true, "drop every packet that would leave outside the tunnel (default on for a full tunnel, off with --route)")
	f.BoolVar(&o.acceptDNS, "accept-dns", true, "point the host's resolver at the DNS servers the server sends while the tunnel is up (default on for a full tunnel, off with --route)")
	f.StringVar(&o.dnsMode, "dns-mode", dnsAuto, "how --accept-dns applies them: auto (systemd-resolved where it manages DNS, else resolv.conf), resolved or file (/etc/resolv.conf)")
	f.BoolVar(&o.reconnect, "reconnect", true, "when the tunnel is lost, keep the TUN, routes and kill switch and reconnect with backoff (false: exit)")
	f.BoolVar(&o.allowLAN, "allow-lan", false, "with the kill switch, still let the directly connected networks be reached")
	f.BoolVar(&o.allowForward, "allow-forward", false, allowForwardHelp)
	f.BoolVar(&o.allowLocalOverlap, "allow-local-overlap", false, "accept tunnel addresses from the server inside the host's own or connected networks")
	return cmd
}

func (o *upOptions) validate() (*upConfig, error) {
	var tmplErr error
	if o.template != "" {
		// The template names the server: its host is the :authority
		// (a proxy checks it) and, without --server, where to dial.
		u, err := url.Parse(strings.NewReplacer("{", "", "}", "").Replace(o.template))
		if err != nil || u.Scheme != "https" || u.Hostname() == "" {
			tmplErr = fmt.Errorf("--template %q: want an https URI template with a host", o.template)
		} else if o.server == "" {
			port := u.Port()
			if port == "" {
				port = "443"
			}
			o.server = net.JoinHostPort(u.Hostname(), port)
		}
	}
	c := &upConfig{upOptions: *o}
	authority, errs := o.check()
	c.authority = authority
	if tmplErr != nil {
		errs = append(errs, tmplErr)
	}
	if o.tokenFile == "" && o.cert == "" {
		errs = append(errs, errors.New("need --token-file or --cert/--key to authenticate"))
	}
	for _, r := range o.routes {
		p, err := parseCIDR(r)
		if err != nil {
			errs = append(errs, fmt.Errorf("--route %q: %v", r, err))
			continue
		}
		c.routes = append(c.routes, p)
	}
	for _, r := range o.excludes {
		p, err := parseCIDR(r)
		if err != nil {
			errs = append(errs, fmt.Errorf("--exclude %q: %v", r, err))
			continue
		}
		c.excludes = append(c.excludes, p)
	}
	if o.mtu < 1280 || o.mtu > 2048 {
		errs = append(errs, fmt.Errorf("--mtu %d: want 1280-2048", o.mtu))
	}
	if o.tun == "" || len(o.tun) > 15 {
		errs = append(errs, fmt.Errorf("--tun %q: want 1-15 characters", o.tun))
	}
	switch o.dnsMode {
	case dnsAuto, dnsResolved, dnsFile:
	default:
		errs = append(errs, fmt.Errorf("--dns-mode %q: want auto, resolved or file", o.dnsMode))
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		errs = append(errs, fmt.Errorf("--log-level %q: want debug, info, warn or error", o.logLevel))
	}
	if len(errs) > 0 {
		return nil, usageError{errors.Join(errs...)}
	}
	if !o.acceptDNSSet {
		// A split tunnel leaves the host's resolver alone: pointing all
		// of the host's DNS at a resolver the server chose would send
		// every name the host looks up to the server (or, outside the
		// routes, past the tunnel).
		c.acceptDNS = len(c.routes) == 0
	}
	tc, token, err := o.credentials()
	if err != nil {
		return nil, err
	}
	c.token = token
	c.tls = tc
	return c, nil
}

// parseCIDR parses a prefix (or a bare address as a host prefix) and
// insists on a masked one.
func parseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		a, err2 := netip.ParseAddr(s)
		if err2 != nil {
			return netip.Prefix{}, errors.New("not a CIDR prefix")
		}
		if a.Zone() != "" {
			return netip.Prefix{}, errors.New("zones are not allowed in a route")
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("host bits set (did you mean %s?)", p.Masked())
	}
	return p, nil
}

func runUp(ctx context.Context, cmd *cobra.Command, c *upConfig) (retErr error) {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.logLevel))
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	log.SetFlags(0)
	log.SetOutput(tunnel.NewLibraryLogWriter(logger, time.Second))

	if os.Geteuid() != 0 {
		return errors.New("up: needs root (CAP_NET_ADMIN) to create the TUN device and routes")
	}
	statePath := filepath.Join(c.stateDir, "state.json")
	// st records the host changes: it is written before each change, and
	// Undo reverses it when the run ends. blocked: a corrupt state file,
	// or a crashed run that left its kill switch up, made this run start
	// with the kill switch up (see blocked.go); until up, the run keeps it
	// whatever happens.
	st, blocked, err := recoverLeftovers(c, statePath, logger)
	if err != nil {
		return err
	}
	// The status socket answers from the start (state connecting), so
	// that masque status and masque down find a run that is still
	// connecting; POST /down ends the run as Ctrl-C does.
	ctx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	status := newStatusServer(c)
	sockPath := filepath.Join(c.stateDir, statusSocket)
	if sl, err := listenStatus(sockPath, status.status, stopRun); err != nil {
		logger.Warn("status socket unavailable", "path", sockPath, "err", err)
	} else {
		defer sl.close()
	}
	if c.metrics != "" {
		_, stopMetrics, err := serveMetrics(c.metrics, status.status, logger)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	// Progress for a person, on stdout like the "up:" line; stderr keeps
	// the log and the one error line.
	fmt.Fprintf(cmd.OutOrStdout(), "connecting: server=%s instance=%s\n", c.server, c.instance)
	var (
		stMu    sync.Mutex  // guards st once the DNS goroutine runs
		stopDNS = func() {} // stops the DNS goroutine, once started
		written = blocked   // st is on disk: there is something to undo
		up      bool        // the tunnel came up
		ksOn    bool        // the kill switch is up
		forced  bool        // the run ends because the server refused to go on: credentials, addresses
	)
	defer func() {
		stopDNS()
		stMu.Lock()
		defer stMu.Unlock()
		if !written {
			return
		}
		if blocked && !up {
			retErr = keepBlocked(c.stateDir, statePath, st, retErr, reasonStartedBlocked)
			return
		}
		if forced && ksOn {
			// Fail closed, as a crash would: the host stays blocked
			// until the user says otherwise.
			retErr = keepBlocked(c.stateDir, statePath, st, retErr, reasonForcedExit)
			return
		}
		if err := tun.Undo(st); err != nil {
			retErr = errors.Join(retErr, err)
			return
		}
		_ = tun.RemoveState(statePath)
	}()

	// The host's own networks, read once: the server may neither assign
	// addresses in them nor have them routed into the tunnel.
	local, err := tun.LocalPrefixes(c.tun)
	if err != nil {
		return fmt.Errorf("read the host's networks: %w", err)
	}
	pol := tunnel.ClientPolicy{Routes: c.routes, Excludes: c.excludes, Local: local, AllowLocalOverlap: c.allowLocalOverlap}

	routing := &tun.Routing{Link: c.tun}
	dialCfg := c
	if blocked {
		// The kill switch lets only marked packets out: look the server's
		// name up from marked sockets, then dial its address under the
		// name.
		pinned, err := pinServer(ctx, c, routingFwMark(routing))
		if err != nil {
			return err
		}
		dialCfg = pinned
	}
	qc, err := dialCfg.dial(ctx, dialCfg.tls, routingFwMark(routing), logger)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer func() { qc.Close() }()
	var dev *tun.Device // created once the addresses are known
	// DNS configurations from the server, latest first, applied once the
	// state file records what to restore.
	dnsUpdates := make(chan []netip.Addr, 1)
	onDNS := func(servers []netip.Addr) {
		if !c.acceptDNS {
			return
		}
		for {
			select {
			case dnsUpdates <- servers:
				return
			default: // full: the older configuration gives way
			}
			select {
			case <-dnsUpdates:
			default:
			}
		}
	}
	connect := func(qc *quicio.ClientConn) (*tunnel.Client, error) {
		client, err := tunnel.Connect(ctx, tunnel.ClientConfig{
			Conn:         qc.Conn,
			Authority:    c.authority,
			Template:     c.template,
			Token:        c.token,
			SetupTimeout: c.connectTimeout,
			MaxMTU:       c.mtu,
			SetMTU:       func(mtu int) error { return dev.SetMTU(mtu) },
			OnDNS:        onDNS,
			Policy:       pol,
			// Taken afresh for each session: the host may have moved.
			LocalNetworks: lanPrefixes(c.tun),
			Logger:        logger,
		})
		if refusedCredentials(err) {
			return nil, fmt.Errorf("%w: check --token-file or the client certificate", err)
		}
		if ae, ok := errors.AsType[*tunnel.AssignmentError](err); ok && ae.Local {
			return nil, fmt.Errorf("%w (--allow-local-overlap lets in addresses inside the host's networks)", err)
		}
		return client, err
	}
	client, err := connect(qc)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer func() { client.Close() }()

	// The routes the server advertised, inside the policy (--route cuts
	// them); the excludes, the host's networks and the server's address
	// become throw routes, so they win over any route.
	routing.Routes = familiesWith(client.Routes(), client.Addresses())
	routing.Excludes = client.Excludes()
	if len(c.routes) > 0 && len(routing.Routes) == 0 {
		logger.Warn("the server advertises none of --route: nothing is routed into the tunnel", "route", joinPrefixes(c.routes))
	}

	killSwitch := c.killSwitch
	if !c.killSwitchSet {
		killSwitch = len(c.routes) == 0 // full tunnel
	}

	// Crash safety: record what is about to change before changing it.
	st.Tun = c.tun
	st.Routing = routing
	if killSwitch && !slices.Contains(st.NFTables, tun.DefaultKillSwitchTable) {
		st.NFTables = append(st.NFTables, tun.DefaultKillSwitchTable)
	}
	if gw, ok := gatewayTable(c, killSwitch); ok && !slices.Contains(st.NFTables, gw) {
		st.NFTables = append(st.NFTables, gw)
	}
	if err := tun.WriteState(statePath, st); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	written = true
	// The kill switch goes up before any route moves traffic, and stays
	// until the routes are gone (Undo deletes its table). After a corrupt
	// state file it replaces the blocking one, the same table, atomically.
	if killSwitch {
		ks := killSwitchConfig(c, routingFwMark(routing))
		if _, err := tun.NewKillSwitch(ks); err != nil {
			return err
		}
		logger.Info("kill switch on", "allow", ks.Allow)
		ksOn = true
	}
	if err := allowForward(c, killSwitch, logger); err != nil {
		return err
	}
	// The TUN starts at what a datagram carries now; Run raises it towards
	// --mtu as QUIC's path MTU discovery finds room.
	minMTU := tun.MinMTU
	if slices.ContainsFunc(client.Addresses(), func(p netip.Prefix) bool { return p.Addr().Is6() }) {
		minMTU = tun.MinIPv6MTU
	}
	// The TUN is not a LAN (EndHost): no router advertisements,
	// autoconfiguration, redirects or link-local address on it, strict
	// reverse-path filtering, nothing forwarded from it (but, with
	// --allow-forward, the replies to the hosts behind this one).
	dev, err = tun.Create(tun.Config{Name: c.tun, MTU: max(client.MTU(), minMTU), Addrs: client.Addresses(), EndHost: true, AllowForward: c.allowForward})
	if err != nil {
		return fmt.Errorf("create TUN %s: %w", c.tun, err)
	}
	defer dev.Close()
	// The TUN's sysctls go with the link, which goes with this process
	// (it is not persistent), so they are recorded only now; Undo skips
	// those of a link that is gone.
	if recordSysctls(st, dev.Sysctls()) {
		if err := tun.WriteState(statePath, st); err != nil {
			return fmt.Errorf("write state: %w", err)
		}
	}
	if err := routing.Apply(); err != nil {
		return fmt.Errorf("routes: %w", err)
	}

	if blocked && !killSwitch {
		// The tunnel is up: the blocking state has served its purpose and
		// the user asked for no kill switch. Delete first, then record:
		// a crash in between leaves a state naming a table that is gone,
		// which Undo takes in its stride.
		if err := tun.DeleteTable(tun.DefaultKillSwitchTable); err != nil {
			return err
		}
		stMu.Lock()
		st.NFTables = slices.DeleteFunc(st.NFTables, func(t string) bool { return t == tun.DefaultKillSwitchTable })
		err := tun.WriteState(statePath, st)
		stMu.Unlock()
		if err != nil {
			return fmt.Errorf("write state: %w", err)
		}
		logger.Info("kill switch off: the tunnel is up")
	}
	up = true

	status.setUp(client, routing.Routes, killSwitch)

	fmt.Fprintf(cmd.OutOrStdout(), "up: server=%s addresses=%s tun=%s\n", c.server, joinPrefixes(client.Addresses()), c.tun)
	logger.Info("tunnel up", "server", c.server, "addresses", client.Addresses(), "routes", logPrefixes(routing.Routes), "offloads", dev.Offloads(), "udp_gso", qc.ConnectionState().GSO)

	t := tunnel.NewTunnel(dev)
	defer dev.Close()

	// DNS settings for systemd-resolved belong to the TUN's link, so
	// applying waits for the TUN (updates meanwhile wait in dnsUpdates),
	// and they are reverted before dev.Close deletes the link (resolved
	// would forget them then anyway). Until runDNS returns it alone
	// touches st.
	dnsCtx, cancelDNS := context.WithCancel(ctx)
	var dnsWG sync.WaitGroup
	if c.acceptDNS {
		dc := c.dnsConfig()
		dc.routes = routing.Routes
		dnsWG.Go(func() { runDNS(dnsCtx, st, statePath, dc, dnsUpdates, logger) })
	}
	stopDNS = func() { cancelDNS(); dnsWG.Wait() }
	defer func() {
		stopDNS()
		if st.Resolved != nil {
			if err := st.Resolved.Revert(); err != nil {
				retErr = errors.Join(retErr, err)
			}
		}
	}()
	// Reconnects dial the address the first dial reached, under the name
	// the first dial checked the certificate for: with the kill switch on,
	// a name could not be resolved again.
	redial := *dialCfg
	redial.server = qc.RemoteAddr().String()
	if host, _, err := net.SplitHostPort(dialCfg.server); err == nil && dialCfg.tls.ServerName == "" {
		if _, err := netip.ParseAddr(host); err != nil {
			redial.tls = dialCfg.tls.Clone()
			redial.tls.ServerName = host
		}
	}
	dial := func(ctx context.Context) (*quicio.ClientConn, error) {
		return redial.dial(ctx, redial.tls, routingFwMark(routing), logger)
	}
	// bo spaces the connections of the whole run: a session that ends
	// soon after it came up counts as a failure (backoff.go).
	var bo reconnectBackoff
	sessionUp := time.Now()
	for {
		// When the server drains (GOAWAY), the next session is opened
		// while this one still carries packets: make before break.
		serveCtx, stopServe := context.WithCancelCause(ctx)
		moved := make(chan moveResult, 1)
		go func(up time.Time) {
			if !c.reconnect {
				moved <- moveResult{skipped: true}
				return
			}
			moved <- moveOnGoAway(ctx, serveCtx, client, func() { stopServe(errMoved) }, &bo, up, dial, connect, logger)
		}(sessionUp)
		runErr := t.Serve(serveCtx, client)
		movedOn := errors.Is(context.Cause(serveCtx), errMoved)
		stopServe(nil)
		var mv moveResult
		select {
		case mv = <-moved:
		default:
			if ctx.Err() == nil && !movedOn {
				select {
				case <-client.GoingAway():
					// The server ended the session (its drain deadline)
					// before the new one was up.
					logger.Warn("tunnel lost while moving to a new session", "err", runErr)
					status.setReconnecting()
				default:
				}
			}
			mv = <-moved
		}
		if ctx.Err() != nil {
			if mv.client != nil {
				mv.client.Close()
				mv.qc.Close()
			}
			logger.Info("tunnel down")
			return nil
		}
		var nqc *quicio.ClientConn
		var nclient *tunnel.Client
		var err error
		lost := time.Now()
		switch {
		case !mv.skipped && mv.err == nil && mv.client != nil:
			qc.Close()
			nqc, nclient = mv.qc, mv.client
			if mv.beforeLoss {
				logger.Info("tunnel moved to a new session before the server ended the old one")
			}
		case !mv.skipped:
			// The move failed for good (credentials, another lease).
			qc.Close()
			forced = true
			return fmt.Errorf("tunnel down: %w", mv.err)
		default:
			if !c.reconnect {
				return fmt.Errorf("tunnel down: %w", runErr)
			}
			logger.Warn("tunnel lost, reconnecting", "err", runErr)
			status.setReconnecting()
			qc.Close()
			client.Close()
			bo.ended(sessionUp)
			nqc, nclient, err = reconnectLoop(ctx, &bo, dial, client.Lease(), connect, logger)
			if err != nil {
				if ctx.Err() != nil {
					logger.Info("tunnel down")
					return nil
				}
				forced = true
				return fmt.Errorf("tunnel down: %w", err)
			}
		}
		qc, client = nqc, nclient
		sessionUp = time.Now()
		// A connection that starts small (its path shrank) grows with
		// path MTU discovery; until it carries what the TUN lets in,
		// large packets would get Packet Too Big, which hosts remember
		// for minutes.
		if mtu, err := dev.MTU(); err == nil {
			client.WaitMTU(ctx, min(mtu, c.mtu), 2*time.Second)
		}
		status.setClient(client)
		logger.Info("tunnel back", "after", time.Since(lost).Round(time.Millisecond).String(), "dropped_while_down", t.Dropped())
	}
}

// recordSysctls adds the sysctls in changed (key: the value to restore)
// that st does not hold yet and reports whether it added any: the first
// recorded value is the one from before masque changed it.
func recordSysctls(st *tun.State, changed map[string]string) bool {
	added := false
	for k, v := range changed {
		if _, ok := st.Sysctls[k]; ok {
			continue
		}
		if st.Sysctls == nil {
			st.Sysctls = map[string]string{}
		}
		st.Sysctls[k] = v
		added = true
	}
	return added
}

// errMoved ends a session that a new one has replaced.
var errMoved = errors.New("moved to a new session")

// moveResult is what moveOnGoAway did.
type moveResult struct {
	skipped    bool // no GOAWAY before the session ended
	qc         *quicio.ClientConn
	client     *tunnel.Client
	err        error
	beforeLoss bool // the new session was up while the old one still was
}

// moveOnGoAway waits for the server's GOAWAY on client (whose session came
// up at up) while serveCtx lasts; then it opens a new session
// (reconnectLoop with bo, until ctx is done),
// and ends the old one by calling stop once the new one is up. Without a
// GOAWAY it reports skipped. With the draining server's listener closed,
// the new session comes up once the server's replacement does (or at
// once where the name leads to another server).
func moveOnGoAway(ctx, serveCtx context.Context, client *tunnel.Client, stop func(), bo *reconnectBackoff, up time.Time,
	dial func(context.Context) (*quicio.ClientConn, error), connect func(*quicio.ClientConn) (*tunnel.Client, error), logger *slog.Logger,
) moveResult {
	select {
	case <-client.GoingAway():
	case <-serveCtx.Done():
		select {
		case <-client.GoingAway():
			// Both at once: the session ended after a GOAWAY.
		default:
			return moveResult{skipped: true}
		}
	}
	logger.Info("server is draining (GOAWAY): opening a new session while this one lasts")
	bo.ended(up)
	nqc, nclient, err := reconnectLoop(ctx, bo, dial, client.Lease(), connect, logger)
	if err != nil {
		return moveResult{err: err}
	}
	before := serveCtx.Err() == nil
	stop()
	return moveResult{qc: nqc, client: nclient, beforeLoss: before}
}

// refusedCredentials reports whether the server refused the tunnel for
// our credentials (401 or 403): retrying cannot help.
func refusedCredentials(err error) bool {
	re, ok := errors.AsType[*tunnel.RefusedError](err)
	return ok && (re.Status == 401 || re.Status == 403)
}

// reconnectLoop dials and opens a session until it succeeds or ctx is
// done. It gives up at once when the server refuses the credentials,
// assigns what the client refuses (tunnel.ErrAssignmentRefused), or
// assigns other addresses than want (the TUN, routes and firewall hold
// those): the caller fails closed.
func reconnectLoop(ctx context.Context, bo *reconnectBackoff, dial func(context.Context) (*quicio.ClientConn, error), want []netip.Prefix,
	connect func(*quicio.ClientConn) (*tunnel.Client, error), logger *slog.Logger,
) (*quicio.ClientConn, *tunnel.Client, error) {
	for attempt := 1; ; attempt++ {
		if err := bo.wait(ctx); err != nil {
			return nil, nil, err
		}
		qc, err := dial(ctx)
		if err != nil {
			bo.failed()
			logger.Info("reconnect failed", "attempt", attempt, "err", err)
			continue
		}
		client, err := connect(qc)
		if err != nil {
			qc.Close()
			if refusedCredentials(err) || errors.Is(err, tunnel.ErrAssignmentRefused) {
				return nil, nil, err
			}
			bo.failed()
			logger.Info("reconnect failed", "attempt", attempt, "err", err)
			continue
		}
		if !slices.Equal(client.Lease(), want) {
			client.Close()
			qc.Close()
			return nil, nil, fmt.Errorf("server assigned %s after reconnecting, not %s (its lease expired or it restarted): run masque up again",
				joinPrefixes(client.Lease()), joinPrefixes(want))
		}
		return qc, client, nil
	}
}

// lanPrefixes returns the networks of the host's interfaces other than
// loopback and the TUN: what --allow-lan lets the kill switch reach.
func lanPrefixes(tunName string) []netip.Prefix {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []netip.Prefix
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagLoopback != 0 || ifc.Name == tunName {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if p, err := netip.ParsePrefix(n.String()); err == nil && !p.Addr().IsLinkLocalUnicast() {
					out = append(out, p.Masked())
				}
			}
		}
	}
	return out
}

// routingFwMark returns the mark that routing will exempt, so the QUIC
// socket gets the same one.
func routingFwMark(r *tun.Routing) uint32 {
	if r.FwMark != 0 {
		return r.FwMark
	}
	return tun.DefaultFwMark
}

// familiesWith keeps the routes of the address families the tunnel has an
// address for.
func familiesWith(routes, addrs []netip.Prefix) []netip.Prefix {
	var has4, has6 bool
	for _, a := range addrs {
		if a.Addr().Is4() {
			has4 = true
		} else {
			has6 = true
		}
	}
	var out []netip.Prefix
	for _, r := range routes {
		if (r.Addr().Is4() && has4) || (r.Addr().Is6() && has6) {
			out = append(out, r)
		}
	}
	return out
}

// maxLoggedPrefixes bounds the prefixes a log line lists: up to
// tunnel.MaxRoutes routes would make a line of tens of KiB.
const maxLoggedPrefixes = 16

// logPrefixes returns ps for a log line: all of them up to
// maxLoggedPrefixes, else the first ones and how many more there are.
func logPrefixes(ps []netip.Prefix) string {
	if len(ps) <= maxLoggedPrefixes {
		return joinPrefixes(ps)
	}
	return fmt.Sprintf("%s and %d more", joinPrefixes(ps[:maxLoggedPrefixes]), len(ps)-maxLoggedPrefixes)
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// dialError turns a QUIC dial failure into one actionable line.
func dialError(addr string, timeout time.Duration, err error) error {
	msg := err.Error()
	switch {
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, "timeout"):
		return fmt.Errorf("connect to %s: timeout after %s (is the server up and UDP reachable?)", addr, timeout)
	case strings.Contains(msg, "x509") || strings.Contains(msg, "certificate"):
		return fmt.Errorf("%v (the server certificate is not trusted: check --ca and --server-name)", err)
	}
	return err
}

// recoverLeftovers undoes what a crashed masque left behind, refusing if
// the owner is still running, and returns the state for this run. After
// a corrupt state file (startBlocked), or a crashed run that left the kill
// switch up when this run wants one too, that state is blocked: the kill
// switch is up and recorded.
func recoverLeftovers(c *upConfig, statePath string, logger *slog.Logger) (st *tun.State, blocked bool, err error) {
	fresh := &tun.State{Version: tun.StateVersion, PID: os.Getpid()}
	old, err := tun.ReadState(statePath)
	if errors.Is(err, tun.ErrUntrustedState) {
		return nil, false, untrustedState(err)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return fresh, false, nil
	}
	if isCorrupt(err) {
		st, err := startBlocked(c, statePath, err, logger)
		return st, err == nil, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("state file %s: %v (remove it, or run masque down)", statePath, err)
	}
	if old.PID > 0 && old.PID != os.Getpid() && processAlive(old.PID) {
		return nil, false, fmt.Errorf("masque is already running as pid %d (state %s)", old.PID, statePath)
	}
	logger.Warn("undoing leftovers of a crashed run", "pid", old.PID)
	// A crashed run that had the kill switch up left the host blocked. If
	// this run wants a kill switch too, the host stays blocked until its
	// tunnel is up: its kill switch replaces the old one in one atomic
	// batch before the rest is undone, and the run starts blocked.
	wantKS := c.killSwitch
	if !c.killSwitchSet {
		wantKS = len(c.routes) == 0
	}
	keep := wantKS && slices.Contains(old.NFTables, tun.DefaultKillSwitchTable)
	if keep {
		if _, err := tun.NewKillSwitch(killSwitchConfig(c, routingFwMark(&tun.Routing{}))); err != nil {
			return nil, false, fmt.Errorf("keep the kill switch of the crashed run: %w", err)
		}
		old.NFTables = slices.DeleteFunc(slices.Clone(old.NFTables), func(t string) bool { return t == tun.DefaultKillSwitchTable })
		fresh.NFTables = []string{tun.DefaultKillSwitchTable}
	}
	if err := tun.Undo(old); err != nil {
		return nil, false, fmt.Errorf("undo leftovers: %w", err)
	}
	if keep {
		if err := tun.WriteState(statePath, fresh); err != nil {
			return nil, false, stillBlocked(c.stateDir, err, reasonStartedBlocked)
		}
		logger.Warn("the crashed run left the kill switch up: all traffic stays blocked until the tunnel is up")
		return fresh, true, nil
	}
	if err := tun.RemoveState(statePath); err != nil {
		return nil, false, err
	}
	return fresh, false, nil
}

func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	// A recycled PID of another program does not count.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.TrimSpace(string(b)) == "masque"
}
