package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/masque-vpn/masque/cmd/internal/flagfile"
	"github.com/masque-vpn/masque/policy"
	"github.com/masque-vpn/masque/quicio"
	"github.com/masque-vpn/masque/tun"
	"github.com/masque-vpn/masque/tunnel"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
)

// serverFlags binds the run flags onto a Config; flags that were set
// override the file.
func serverFlags(cmd *cobra.Command, c *Config, configPath *string) {
	f := cmd.Flags()
	f.StringVar(configPath, "config", "", "configuration file: TOML whose keys are these flags (listen = \"[::]:443\"); flags override it, MASQUED_<FLAG> variables come between")
	f.StringVar(&c.Listen, "listen", "", "UDP address to listen on (default "+defaultListen+")")
	f.StringVar(&c.Cert, "cert", "", "server certificate (PEM)")
	f.StringVar(&c.Key, "key", "", "server private key (PEM)")
	f.StringArrayVar(&c.ServerNames, "server-name", nil, "a name or address clients may address besides the certificate's and the one they dialed; others get 421 (repeatable; *.NAME matches one label)")
	f.StringVar(&c.ClientCA, "client-ca", "", "CA that signs client certificates (enables mTLS; a certificate alone is identity cert:CN, with a token the token's identity must be the CN)")
	f.StringVar(&c.Tokens, "tokens", "", "bearer tokens file, lines of IDENTITY TOKEN")
	f.StringVar(&c.Pool4, "pool4", "", "IPv4 client address pool, or off (default "+defaultPool4+")")
	f.StringVar(&c.Pool6, "pool6", "", "IPv6 client address pool, or off (default "+defaultPool6+")")
	durationVar(f, &c.LeaseTime, "lease-time", "how long a disconnected identity keeps its addresses (default "+defaultLeaseTime.String()+")")
	f.StringVar(&c.Egress, "egress", "", "interface to masquerade client traffic out of (default: any but the TUN)")
	f.StringVar(&c.StateDir, "state-dir", "", "directory for keys and crash-recovery state (default "+defaultStateDir+")")
	f.StringVar(&c.Tun, "tun", "", "server TUN device name (default "+defaultTun+")")
	f.IntVar(&c.MTU, "mtu", 0, "server TUN MTU (default "+strconv.Itoa(defaultMTU)+")")
	f.StringArrayVar(&c.DNS, "dns", nil, "DNS server to send to clients (repeatable)")
	f.StringArrayVar(&c.Routes, "route", nil, "route to advertise to clients (repeatable; default all of each pool's family)")
	f.StringArrayVar(&c.Allow, "allow", nil, "destination prefix clients may reach even if denied by default (repeatable)")
	f.BoolVar(&c.AllowClientToClient, "allow-client-to-client", false, "let clients reach each other's addresses")
	f.StringArrayVar(&c.Deny, "deny", nil, "destination prefix clients must not reach (repeatable)")
	f.IntVar(&c.MaxConns, "max-conns", 0, "concurrent QUIC connections (default 10000)")
	f.IntVar(&c.MaxConnsPerSource, "max-conns-per-source", 0, "concurrent QUIC connections from one IP address, handshakes included (default 64)")
	f.IntVar(&c.MaxHandshakeRate, "max-handshake-rate", 0, "QUIC handshakes started per second; over half of it new peers must answer a Retry first, over it they are refused; -1 for no limit (default 1000)")
	f.IntVar(&c.RetryThreshold, "retry-threshold", 0, "handshakes in flight above which new peers must answer a Retry first; -1 for always (default 128)")
	f.IntVar(&c.MaxSessionsPerConn, "max-sessions-per-conn", 0, "CONNECT-IP sessions per QUIC connection (default 4)")
	f.IntVar(&c.MaxSessionsPerIdentity, "max-sessions-per-identity", 0, "CONNECT-IP sessions per identity over all its connections (default 16)")
	durationVar(f, &c.DrainTimeout, "drain-timeout", "on SIGTERM, how long sessions may go on after the GOAWAY before the rest are ended (default 5s)")
	durationVar(f, &c.RequestTimeout, "request-timeout", "close a connection that sends no request this long after its handshake (default 5s)")
	f.StringVar(&c.Metrics, "metrics", "", "serve Prometheus metrics on HOST:PORT at /metrics")
	f.BoolVar(&c.Pprof, "pprof", false, "also serve Go profiles at /debug/pprof/ on the metrics listener (debugging; keep that listener private)")
	f.StringVar(&c.LogLevel, "log-level", "", "debug, info, warn or error (default info)")
	durationVar(f, &c.UDPIdleTimeout, "udp-idle-timeout", "close a CONNECT-UDP flow idle this long (default 2m; RFC 9298 advises not less)")
	durationVar(f, &c.UDPResolveTimeout, "udp-resolve-timeout", "bound the resolution of a CONNECT-UDP target name (default 5s)")
	f.IntVar(&c.UDPMaxFlowsPerConn, "udp-max-flows-per-conn", 0, "CONNECT-UDP flows per QUIC connection (default 64)")
	f.IntVar(&c.UDPMaxFlowsPerIdentity, "udp-max-flows-per-identity", 0, "CONNECT-UDP flows per identity (default 256)")
	f.Var(udpAllowFlag{&c.UDPAllow}, "udp-allow", "restrict IDENTITY (or *) to CONNECT-UDP targets HOST:PORT (repeatable; e.g. alice=*.example:53)")
	f.StringArrayVar(&c.UDPAnonymous, "udp-anonymous", nil, "let requests without credentials reach CONNECT-UDP target HOST:PORT (repeatable; default none)")
}

// configLoader reads the configuration as a run (or config check) has
// it: the command line's flags, bound to a Config, under which the file
// sets the others (flagfile). It reads again on SIGHUP: the file's
// settings of the last time are forgotten first, so that a key taken out
// of the file goes back to its default.
type configLoader struct {
	cmd     *cobra.Command
	c       *Config // the flags' Config
	path    *string // --config
	base    Config  // c as the command line left it
	cmdline map[string]bool
}

// newConfigLoader binds run's flags to c for cmd.
func newConfigLoader(cmd *cobra.Command, c *Config, path *string) *configLoader {
	serverFlags(cmd, c, path)
	return &configLoader{cmd: cmd, c: c, path: path}
}

// load reads the file (if any) under the command line's flags and
// validates the result. The first call notes what the command line set.
func (l *configLoader) load() (*settings, error) {
	if l.cmdline == nil {
		l.cmdline = flagfile.CommandLine(l.cmd.Flags())
		l.base = l.c.clone()
	}
	*l.c = l.base.clone()
	if err := checkNotJSON(*l.path); err != nil {
		return nil, usageError{err}
	}
	err := flagfile.Apply(l.cmd.Flags(), *l.path, flagfile.Options{
		EnvPrefix: "MASQUED_", Environ: os.Environ(), Reserved: []string{"config", "help"}, CommandLine: l.cmdline,
	})
	if err != nil {
		return nil, usageError{fmt.Errorf("config %w", err)}
	}
	s, err := l.c.resolve()
	if err != nil {
		// One line on stderr, however many problems.
		return nil, usageError{fmt.Errorf("invalid configuration: %s", strings.ReplaceAll(err.Error(), "\n", "; "))}
	}
	return s, nil
}

// clone copies c, its udp-allow map too (the flag adds to it).
func (c Config) clone() Config {
	c.UDPAllow = maps.Clone(c.UDPAllow)
	return c
}

// checkNotJSON refuses a configuration in JSON, which masqued read before
// it read TOML, with a line that says how it is written now.
func checkNotJSON(path string) error {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil // flagfile says what is wrong with it
	}
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '{' {
		return fmt.Errorf("config %s: this is JSON; the configuration is TOML now, its keys run's flags: listen = \"[::]:443\", cert = \"/etc/masqued/server.crt\", route = [\"0.0.0.0/0\"] (masqued run --help lists them)", path)
	}
	return nil
}

func newRunCmd() *cobra.Command {
	var (
		c       Config
		path    string
		format  logFormat
		qlogDir string
		loader  *configLoader
	)
	cmd := &cobra.Command{
		Use:   "run --listen ADDR:PORT --cert F --key F [flags]",
		Short: "Run the server in the foreground",
		Example: `  # From a configuration file (flags given too override it):
  masqued run --config /etc/masqued/masqued.conf
  # From flags alone, tokens for authentication:
  masqued run --listen [::]:443 --cert /etc/masqued/server.crt --key /etc/masqued/server.key --tokens /etc/masqued/tokens
  # Out of eth0 only, with metrics and JSON logs:
  masqued run --config /etc/masqued/masqued.conf --egress eth0 --metrics 127.0.0.1:9090 --log-format json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := loader.load()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			// SIGHUP reads the file again, with the same flags on top.
			return runServer(ctx, s, loader.load, format, qlogDir)
		},
	}
	loader = newConfigLoader(cmd, &c, &path)
	addLogFormatFlag(cmd.Flags(), &format)
	cmd.Flags().StringVar(&qlogDir, "qlog", "", "write a qlog file of each QUIC connection into DIR (created 0700): for debugging, it grows with every connection")
	groupFlags(cmd, serverFlagGroups)
	return cmd
}

// configCheckExample is the Example of config and config check.
const configCheckExample = `  # The file, the certificate, key and tokens it names, the egress interface:
  masqued config check --config /etc/masqued/masqued.conf
  # The same with the flags a run would add:
  masqued config check --config /etc/masqued/masqued.conf --pool6 off --egress eth0`

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Configuration tools", Example: configCheckExample}
	var (
		c      Config
		path   string
		format logFormat // taken, as run takes it, and unused: check logs nothing
		loader *configLoader
	)
	check := &cobra.Command{
		Use:     "check [--config FILE] [flags]",
		Short:   "Validate the configuration and the files it names, then exit",
		Example: configCheckExample,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := loader.load()
			if err != nil {
				return err
			}
			if _, err := loadServerMaterial(s); err != nil {
				return usageError{err}
			}
			if err := checkEgress(s.Egress); err != nil {
				return usageError{err}
			}
			if perm, open := tokensModeOpen(s.Tokens); s.Tokens != "" && open {
				// A diagnostic, not a failure: run starts with it too.
				fmt.Fprintf(cmd.ErrOrStderr(), "masqued: warning: tokens file %s has mode %04o, accessible to group or others: chmod 600 %s\n", s.Tokens, perm, s.Tokens)
			}
			fmt.Fprintln(cmd.OutOrStdout(), "configuration ok")
			return nil
		},
	}
	loader = newConfigLoader(check, &c, &path)
	addLogFormatFlag(check.Flags(), &format)
	groupFlags(check, serverFlagGroups)
	cmd.AddCommand(check)
	return cmd
}

func runServer(ctx context.Context, s *settings, reload func() (*settings, error), format logFormat, qlogDir string) (retErr error) {
	logger := newLogger(os.Stderr, s.LogLevel, format)
	log.SetFlags(0)
	log.SetOutput(tunnel.NewLibraryLogWriter(logger, time.Second))

	m, err := loadServerMaterial(s)
	if err != nil {
		return usageError{err}
	}
	if s.Tokens != "" {
		warnOpenTokens(logger, s.Tokens)
	}
	if os.Geteuid() != 0 {
		return errors.New("run: needs root (CAP_NET_ADMIN) to create the TUN device, routes and NAT")
	}
	if err := checkEgress(s.Egress); err != nil {
		return usageError{err}
	}

	var pool4, pool6 *policy.Pool
	var tunAddrs, pools []netip.Prefix
	if s.Pool4.IsValid() {
		if pool4, err = policy.NewPool(s.Pool4, s.LeaseTime); err != nil {
			return usagef("pool4: %v", err)
		}
		tunAddrs = append(tunAddrs, netip.PrefixFrom(pool4.Gateway(), s.Pool4.Bits()))
		pools = append(pools, s.Pool4)
	}
	if s.Pool6.IsValid() {
		if pool6, err = policy.NewPool(s.Pool6, s.LeaseTime); err != nil {
			return usagef("pool6: %v", err)
		}
		tunAddrs = append(tunAddrs, netip.PrefixFrom(pool6.Gateway(), s.Pool6.Bits()))
		pools = append(pools, s.Pool6)
	}
	dests, err := destinations(s, tunAddrs)
	if err != nil {
		return usagef("destinations: %v", err)
	}

	// Crash safety: undo what a previous run left behind, and record what
	// this run is about to change before changing it.
	statePath := filepath.Join(s.StateDir, "state.json")
	if old, err := tun.ReadState(statePath); errors.Is(err, tun.ErrUntrustedState) {
		return usagef("%v: refused (state directory and file must be root's and not writable by group or others: chown root and chmod go-w them, or use another --state-dir)", err)
	} else if err == nil {
		logger.Warn("undoing leftovers of a previous run", "pid", old.PID)
		if err := tun.Undo(old); err != nil {
			logger.Warn("undo of previous run incomplete", "err", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		logger.Warn("ignoring unreadable state file", "path", statePath, "err", err)
	}
	st := &tun.State{Version: tun.StateVersion, PID: os.Getpid(), Tun: s.Tun, NFTables: []string{nftTable}, Sysctls: map[string]string{}}
	sysctls := map[string]string{}
	if pool4 != nil {
		sysctls["net/ipv4/ip_forward"] = "1"
	}
	if pool6 != nil {
		sysctls["net/ipv6/conf/all/forwarding"] = "1"
	}
	for k := range sysctls {
		old, err := os.ReadFile(filepath.Join("/proc/sys", k))
		if err != nil {
			return fmt.Errorf("read sysctl %s: %w", k, err)
		}
		st.Sysctls[k] = string(trimNL(old))
	}
	if err := tun.WriteState(statePath, st); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	defer func() {
		if err := tun.Undo(st); err != nil {
			logger.Warn("cleanup incomplete", "err", err)
			retErr = errors.Join(retErr, err)
			return
		}
		_ = tun.RemoveState(statePath)
	}()

	dev, err := tun.Create(tun.Config{Name: s.Tun, MTU: s.MTU, Addrs: tunAddrs})
	if err != nil {
		return fmt.Errorf("create TUN %s: %w", s.Tun, err)
	}
	defer dev.Close()
	for k, v := range sysctls {
		if _, err := tun.SetSysctl(k, v); err != nil {
			return err
		}
	}
	nat, err := tun.NewNAT(nftTable, s.Egress, s.Tun, pools)
	if err != nil {
		return fmt.Errorf("set up NAT: %w", err)
	}
	defer nat.Close()

	// The local address of each connection is the server's too.
	names := append(slices.Clone(m.names), s.ServerNames...)
	app, err := tunnel.NewServer(tunnel.ServerConfig{
		Auth:                   m.auth,
		Pool4:                  pool4,
		Pool6:                  pool6,
		Destinations:           dests,
		Device:                 dev,
		Routes:                 s.Routes,
		DNS:                    s.DNS,
		Port:                   int(s.Listen.Port()),
		Names:                  names,
		MaxSessionsPerConn:     s.MaxSessionsPerConn,
		MaxSessionsPerIdentity: s.MaxSessionsPerIdentity,
		RequestTimeout:         s.RequestTimeout,
		Logger:                 logger,
		UDP: tunnel.UDPConfig{
			Rules:               s.UDPRules,
			IdleTimeout:         s.UDPIdleTimeout,
			ResolveTimeout:      s.UDPResolveTimeout,
			MaxFlowsPerConn:     s.UDPMaxFlowsPerConn,
			MaxFlowsPerIdentity: s.UDPMaxFlowsPerIdentity,
		},
	})
	if err != nil {
		return err
	}
	defer func() {
		app.Close()
		dev.Close()
		<-app.TUNDone()
	}()

	qconf := app.QUICConfig()
	if qlogDir != "" {
		if qconf.Tracer, err = quicio.QlogTracer(qlogDir); err != nil {
			return usagef("--qlog: %v", err)
		}
	}
	qs, err := quicio.NewServer(quicio.Config{
		Addr:              s.Listen.String(),
		TLSConfig:         m.tls,
		QUICConfig:        qconf,
		StateDir:          s.StateDir,
		MaxConns:          s.MaxConns,
		MaxConnsPerSource: s.MaxConnsPerSource,
		MaxHandshakeRate:  s.MaxHandshakeRate,
		RetryThreshold:    s.RetryThreshold,
		Logger:            logger,
	}, app)
	if err != nil {
		return err
	}

	var metricsSrv *http.Server
	if s.Metrics != "" {
		reg := newRegistry(app.Collector(), qs.Collector())
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		if s.Pprof {
			handlePprof(mux)
		}
		ln, err := net.Listen("tcp", s.Metrics)
		if err != nil {
			qs.Close()
			return fmt.Errorf("metrics listen on %s: %w", s.Metrics, err)
		}
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go metricsSrv.Serve(ln)
		defer metricsSrv.Close()
	}

	logger.Info("tunnel ready", "tun", s.Tun, "addresses", tunAddrs, "egress", s.Egress, "server_names", names)
	serveErr := make(chan error, 1)
	go func() { serveErr <- qs.Serve() }()
	// Ready only now: the socket is bound (quic-go answers handshakes
	// from here on), the TUN, the sysctls and the NAT are in place.
	addr := qs.Addr().String()
	n := &notifier{logger: logger}
	n.ready(servingStatus(addr, 0))
	var statusTick <-chan time.Time
	if n.enabled() {
		t := time.NewTicker(notifyStatusInterval)
		defer t.Stop()
		statusTick = t.C
	}
	lastSessions := 0
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// The policy refuses this host's addresses: follow them as they change.
	addrsChanged, stopWatch := watchAddrs(ctx, logger)
	defer stopWatch()
wait:
	for {
		select {
		case err := <-serveErr:
			qs.Close()
			return err
		case <-hup:
			n.reloading()
			applied := reloadConfig(s, reload, m, app, tunAddrs, logger)
			lastSessions = app.Sessions()
			status := servingStatus(addr, lastSessions)
			if !applied {
				status += " (reload failed: configuration unchanged, see the log)"
			}
			n.ready(status)
		case <-statusTick:
			if ns := app.Sessions(); ns != lastSessions {
				lastSessions = ns
				n.status(servingStatus(addr, ns))
			}
		case <-addrsChanged:
			dests, err := destinations(s, tunAddrs)
			if err != nil {
				logger.Error("host addresses changed: policy unchanged", "err", err)
				continue
			}
			closed := app.SetPolicy(dests, s.UDPRules)
			logger.Info("host addresses changed: policy rebuilt", "prefixes", len(hostPrefixes()), "udp_flows_closed", closed)
		case <-ctx.Done():
			break wait
		}
	}
	logger.Info("shutting down", "drain_timeout", s.DrainTimeout.String())
	n.stopping(fmt.Sprintf("draining %d sessions for up to %s", app.Sessions(), s.DrainTimeout))
	sctx, cancel := context.WithTimeout(context.Background(), s.DrainTimeout)
	defer cancel()
	if err := qs.Shutdown(sctx); err != nil {
		logger.Warn("shutdown", "err", err)
	}
	<-serveErr
	logger.Info("stopped")
	return nil
}

// notifyStatusInterval is how often the service manager's status line
// follows the number of sessions (only when it changed).
const notifyStatusInterval = 10 * time.Second

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}
