package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/masque-vpn/masque/quicio"

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
	authorities []string // each server's :authority
	slot        tun.Slot // the instance's, once claimed (runUp)
	claimPath   string   // the claim's file in the registry
	token       string
	tls         *tls.Config
	routes      []netip.Prefix
	excludes    []netip.Prefix
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
			if err := checkProfileSecrets(cmd.Flags(), path); err != nil {
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
		} else if len(o.servers) == 0 {
			port := u.Port()
			if port == "" {
				port = "443"
			}
			o.servers = []string{net.JoinHostPort(u.Hostname(), port)}
		}
	}
	authorities, errs := o.check()
	c := &upConfig{upOptions: *o, authorities: authorities}
	// The instance registry records it absolute, for masque down from
	// any directory.
	if abs, err := filepath.Abs(o.stateDir); err == nil {
		c.stateDir = abs
	}
	if tmplErr != nil {
		errs = append(errs, tmplErr)
	}
	if o.tokenFile == "" && o.inlineToken == "" && o.cert == "" && o.certPEM == "" {
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
	tc, token, err := c.credentials()
	if err != nil {
		return nil, err
	}
	c.token = token
	c.tls = tc
	return c, nil
}

func runUp(ctx context.Context, cmd *cobra.Command, c *upConfig) (retErr error) {
	logger := newLogger(os.Stderr, c.logLevel, logFormatOf(cmd))
	log.SetFlags(0)
	log.SetOutput(tunnel.NewLibraryLogWriter(logger, time.Second))

	if os.Geteuid() != 0 {
		return errors.New("up: needs root (CAP_NET_ADMIN) to create the TUN device and routes: sudo masque up")
	}
	// The instance's slot: its routing table, mark, rule priorities and
	// kill switch, which no other instance touches. A second instance
	// whose names would collide with a running one's, or that would fight
	// it (two full tunnels, a kill switch on either side), is refused here,
	// before anything of the host changes.
	if err := checkTUNFree(c.tun); err != nil {
		return err
	}
	claim, err := tun.ClaimSlot(tun.DefaultRegistryDir, tun.Claim{Instance: c.instance, StateDir: c.stateDir, Tun: c.tun,
		FullTunnel: len(c.routes) == 0, KillSwitch: c.wantKillSwitch()})
	if err != nil {
		return err
	}
	c.slot = claim.Slot
	if c.claimPath, err = tun.ClaimPath(tun.DefaultRegistryDir, claim.Slot); err != nil {
		return err
	}
	released := false
	defer func() {
		if !released {
			// No state was written (Undo of a written one releases it).
			if err := tun.ReleaseClaim(tun.DefaultRegistryDir, c.slot); err != nil {
				logger.Warn("instance slot not released", "slot", int(c.slot), "err", err)
			}
		}
	}()
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
	fmt.Fprintf(cmd.OutOrStdout(), "connecting: server=%s instance=%s\n", strings.Join(c.servers, ","), c.instance)
	// The same for the service manager (masque@.service is Type=notify),
	// and STOPPING=1 as soon as the run is told to end, before the clean-up.
	n := &notifier{logger: logger, tun: c.tun}
	n.status("connecting to " + strings.Join(c.servers, ","))
	defer context.AfterFunc(ctx, n.stopping)()

	// The host's own networks, read once: the server may neither assign
	// addresses in them nor have them routed into the tunnel.
	local, err := tun.LocalPrefixes(c.tun)
	if err != nil {
		return fmt.Errorf("read the host's networks: %w", err)
	}
	h := &upHost{
		c: c, st: st, statePath: statePath, blocked: blocked, written: blocked,
		routing: c.routing(), status: status, out: cmd.OutOrStdout(), logger: logger,
		dnsUpdates: make(chan []netip.Addr, 1), stopDNS: func() {},
		routeUpdates: make(chan *tunnel.Client, 1), stopRoutes: func() {},
	}
	defer func() {
		h.stopDNS()
		h.stMu.Lock()
		defer h.stMu.Unlock()
		if !h.written {
			return
		}
		released = true // by Undo, or kept with the blocked state
		if h.blocked && !h.up {
			retErr = keepBlocked(c.stateDir, statePath, st, retErr, reasonStartedBlocked)
			return
		}
		if _, forced := errors.AsType[*tunnel.ForcedError](retErr); forced && h.ksOn {
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
	defer h.close(&retErr)

	pol := tunnel.ClientPolicy{Routes: c.routes, Excludes: c.excludes, Local: local, AllowLocalOverlap: c.allowLocalOverlap}
	d := &serverDialer{c: c, mark: routingFwMark(h.routing), resolveMarked: blocked, logger: logger}
	agent, err := tunnel.NewAgent(tunnel.AgentConfig{
		Servers: c.agentServers(),
		Dial:    d.dial,
		Connect: func(ctx context.Context, qc *quicio.ClientConn, s tunnel.AgentServer) (*tunnel.Client, error) {
			client, err := tunnel.Connect(ctx, tunnel.ClientConfig{
				Conn:         qc.Conn,
				Authority:    s.Authority,
				Template:     s.Template,
				Token:        c.token,
				SetupTimeout: c.connectTimeout,
				MaxMTU:       c.mtu,
				SetMTU:       func(mtu int) error { return h.setMTU(mtu) },
				OnDNS:        h.onDNS,
				OnRoutes:     h.onRoutes,
				Policy:       pol,
				// Taken afresh for each session: the host may have moved.
				LocalNetworks: lanPrefixes(c.tun),
				Logger:        logger,
			})
			if tunnel.RefusedCredentials(err) {
				return nil, fmt.Errorf("%w: check --token-file or the client certificate", err)
			}
			if ae, ok := errors.AsType[*tunnel.AssignmentError](err); ok && ae.Local {
				return nil, fmt.Errorf("%w (--allow-local-overlap lets in addresses inside the host's networks)", err)
			}
			return client, err
		},
		Host:      h,
		Reconnect: c.reconnect,
		OnEvent:   func(e tunnel.AgentEvent) { h.onEvent(e); status.onEvent(e); n.onEvent(e) },
		Logger:    logger,
	})
	if err != nil {
		return err
	}
	return agent.Run(ctx)
}

// agentServers are the servers the Agent dials, in the user's order.
func (c *upConfig) agentServers() []tunnel.AgentServer {
	out := make([]tunnel.AgentServer, len(c.servers))
	for i, s := range c.servers {
		out[i] = tunnel.AgentServer{Addr: s, Authority: c.authorities[i], Template: c.template}
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

// dialError turns a QUIC dial failure into one actionable line.
func dialError(addr string, timeout time.Duration, err error) error {
	msg := err.Error()
	if de, ok := errors.AsType[*net.DNSError](err); ok {
		// Before the timeout case: a resolver that does not answer is
		// no server that does not.
		switch {
		case de.IsNotFound:
			return fmt.Errorf("resolve %s: no such host (check --server)", de.Name)
		case de.IsTimeout:
			return fmt.Errorf("resolve %s: the DNS server did not answer (%s)", de.Name, de.Server)
		}
		return fmt.Errorf("resolve %s: %v", de.Name, de.Err)
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, "timeout"):
		return fmt.Errorf("connect to %s: timeout after %s (is the server up and UDP reachable?)", addr, timeout)
	case strings.Contains(msg, "x509") || strings.Contains(msg, "certificate"):
		return fmt.Errorf("%v (the server certificate is not trusted: check --ca and --server-name)", err)
	}
	return err
}
