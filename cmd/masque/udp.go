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
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/masque-vpn/masque/quicio"
	"github.com/masque-vpn/masque/tunnel"
	"github.com/quic-go/quic-go"
	"github.com/spf13/cobra"
)

// defaultUDPStateDir holds the forwarder's status socket; it is not the
// tunnel's, so that both can run at once.
const defaultUDPStateDir = "/run/masque-udp"

// udpOptions are the flags of masque udp.
type udpOptions struct {
	serverOptions
	listen, target string
	forwards       []string
	template       string
	idleTimeout    time.Duration
	maxFlows       int
	stateDir       string
	noCheck        bool
	logLevel       string
}

// udpConfig is a validated udpOptions.
type udpConfig struct {
	udpOptions
	authority string
	token     string
	tls       *tls.Config
	forwards  []tunnel.UDPForward
}

func newUDPCmd() *cobra.Command {
	var o udpOptions
	cmd := &cobra.Command{
		Use:   "udp --server HOST:PORT --listen ADDR:PORT --target HOST:PORT [flags]",
		Short: "Forward local UDP ports to targets through the server (CONNECT-UDP)",
		Long: `Listens on local UDP ports and carries each local peer's datagrams to a
target through the server, over CONNECT-UDP (RFC 9298), without a tunnel
device, routes or root. Each local peer address gets a flow of its own on one
QUIC connection; a flow closes after --idle-timeout without traffic. The
server resolves target names and applies its destination policy.

Counters: masque status --state-dir DIR, where DIR is this command's
--state-dir (` + defaultUDPStateDir + ` by default).`,
		Example: `  # DNS through the server to 198.18.2.2:
  masque udp --server vpn.example.com:443 --token-file token --listen 127.0.0.1:5353 --target 198.18.2.2:53
  dig @127.0.0.1 -p 5353 example.com
  # Two ports at once:
  masque udp --server vpn.example.com:443 --token-file token --forward 127.0.0.1:5353=198.18.2.2:53 --forward 127.0.0.1:1234=ntp.example:123`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := refuseProfileOnly(cmd.Flags()); err != nil {
				return err
			}
			cfg, err := o.validate()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runUDP(ctx, cmd, cfg)
		},
	}
	f := cmd.Flags()
	o.addFlags(f)
	f.StringVar(&o.listen, "listen", "", "local UDP address to listen on, e.g. 127.0.0.1:5353 (with --target)")
	f.StringVar(&o.target, "target", "", "HOST:PORT that --listen forwards to")
	f.StringArrayVar(&o.forwards, "forward", nil, "LISTEN=TARGET, e.g. 127.0.0.1:5353=198.18.2.2:53 (repeatable)")
	f.StringVar(&o.template, "template", "", "the proxy's URI template (default https://SERVER/.well-known/masque/udp/{target_host}/{target_port}/)")
	f.DurationVar(&o.idleTimeout, "idle-timeout", tunnel.DefaultUDPIdleTimeout, "close a flow after this long without traffic")
	f.IntVar(&o.maxFlows, "max-flows", tunnel.DefaultUDPClientMaxFlows, "open flows at most; a new peer replaces the least active one")
	f.StringVar(&o.stateDir, "state-dir", defaultUDPStateDir, "directory for the status socket")
	f.BoolVar(&o.noCheck, "no-check", false, "do not open a test flow to each target at start")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

func (o *udpOptions) validate() (*udpConfig, error) {
	authorities, errs := o.check()
	if len(o.servers) > 1 {
		errs = append(errs, errors.New("--server: masque udp takes one"))
	}
	c := &udpConfig{udpOptions: *o}
	if len(authorities) > 0 {
		c.authority = authorities[0]
	}
	if (o.listen == "") != (o.target == "") {
		errs = append(errs, errors.New("--listen and --target go together"))
	} else if o.listen != "" {
		c.forwards = append(c.forwards, tunnel.UDPForward{Listen: o.listen, Target: o.target})
	}
	for _, f := range o.forwards {
		l, t, ok := strings.Cut(f, "=")
		if !ok {
			errs = append(errs, fmt.Errorf("--forward %q: want LISTEN=TARGET", f))
			continue
		}
		c.forwards = append(c.forwards, tunnel.UDPForward{Listen: l, Target: t})
	}
	if len(c.forwards) == 0 && o.listen == "" {
		errs = append(errs, errors.New("need --listen and --target, or --forward"))
	}
	seen := map[string]bool{}
	for _, fw := range c.forwards {
		if err := checkListen(fw.Listen); err != nil {
			errs = append(errs, fmt.Errorf("listen %q: %v", fw.Listen, err))
		} else if seen[fw.Listen] && !strings.HasSuffix(fw.Listen, ":0") {
			errs = append(errs, fmt.Errorf("listen %q: given twice", fw.Listen))
		}
		seen[fw.Listen] = true
		if err := checkTarget(fw.Target); err != nil {
			errs = append(errs, fmt.Errorf("target %q: %v", fw.Target, err))
		}
	}
	if o.template != "" && (!strings.Contains(o.template, "{target_host}") || !strings.Contains(o.template, "{target_port}")) {
		errs = append(errs, fmt.Errorf("--template %q: needs {target_host} and {target_port}", o.template))
	}
	if o.idleTimeout <= 0 {
		errs = append(errs, errors.New("--idle-timeout must be positive"))
	}
	if o.maxFlows < 1 {
		errs = append(errs, errors.New("--max-flows must be at least 1"))
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		errs = append(errs, fmt.Errorf("--log-level %q: want debug, info, warn or error", o.logLevel))
	}
	if len(errs) > 0 {
		return nil, usageError{errors.Join(errs...)}
	}
	// The credentials are optional here: some proxies serve CONNECT-UDP
	// without any.
	tc, token, err := c.credentials()
	if err != nil {
		return nil, err
	}
	c.token = token
	c.tls = tc
	return c, nil
}

// checkListen accepts a local ADDR:PORT (an IP literal, "localhost", or
// an empty host for every address).
func checkListen(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("want ADDR:PORT")
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q is not 0-65535", port)
	} else if p == 0 {
		return nil // the kernel picks; the start line says which
	}
	if host != "" && host != "localhost" {
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("%q is not an IP address", host)
		}
	}
	return nil
}

// checkTarget accepts HOST:PORT with a port 1-65535; the server resolves
// the host and has the last word on it.
func checkTarget(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return errors.New("want HOST:PORT")
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("port %q is not 1-65535", port)
	}
	return nil
}

func runUDP(ctx context.Context, cmd *cobra.Command, c *udpConfig) error {
	logger := newLogger(os.Stderr, c.logLevel, logFormatOf(cmd))
	log.SetFlags(0)
	log.SetOutput(tunnel.NewLibraryLogWriter(logger, time.Second))

	qc, err := c.dial(ctx, c.tls, 0, logger)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	// A lost connection (a server restart, or the server closing a
	// connection that carried no flow for a while) is redialled when the
	// next flow needs it.
	conns := []*quicio.ClientConn{qc}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	redial := func(ctx context.Context) (*quic.Conn, error) {
		nc, err := c.dial(ctx, c.tls, 0, logger)
		if err != nil {
			return nil, err
		}
		// Only the forwarder's dial path calls this, one at a time; the
		// connections before are over.
		for _, old := range conns {
			old.Close()
		}
		conns = append(conns[:0], nc)
		return nc.Conn, nil
	}
	fwd, err := tunnel.NewUDPForwarder(tunnel.UDPForwarderConfig{
		Conn:         qc.Conn,
		Redial:       redial,
		Template:     c.template,
		Authority:    c.authority,
		Token:        c.token,
		Forwards:     c.forwards,
		IdleTimeout:  c.idleTimeout,
		MaxFlows:     c.maxFlows,
		SetupTimeout: c.connectTimeout,
		Logger:       logger,
	})
	if err != nil {
		return err
	}
	defer fwd.Close()
	if !c.noCheck {
		if err := fwd.Check(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if re, ok := errors.AsType[*tunnel.UDPRefusedError](err); ok && re.Status == 401 {
				return fmt.Errorf("%v: check --token-file or the client certificate", err)
			}
			return err
		}
	}

	status := &udpStatusServer{cfg: c, fwd: fwd}
	sockPath := filepath.Join(c.stateDir, statusSocket)
	ctx, stopRun := context.WithCancel(ctx) // masque down's way in
	defer stopRun()
	if sl, err := listenStatus(sockPath, status.status, stopRun); err != nil {
		logger.Warn("status socket unavailable", "path", sockPath, "err", err)
	} else {
		defer sl.close()
	}
	out := cmd.OutOrStdout()
	for i, a := range fwd.ListenAddrs() {
		fmt.Fprintf(out, "udp: server=%s listen=%s target=%s\n", c.server, a, c.forwards[i].Target)
	}
	logger.Info("forwarding", "server", c.server, "forwards", len(c.forwards), "idle_timeout", c.idleTimeout.String())
	if err := fwd.Run(ctx); err != nil {
		return fmt.Errorf("udp: %w", err)
	}
	logger.Info("stopped")
	return nil
}
