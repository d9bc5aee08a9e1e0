package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/masque-vpn/masque/tun"
)

// --dns-mode values.
const (
	dnsAuto     = "auto"
	dnsResolved = "resolved"
	dnsFile     = "file"
)

// dnsDetectTimeout bounds the look at the system bus that --dns-mode auto
// takes.
const dnsDetectTimeout = 5 * time.Second

// dnsConfig says how masque up applies the server's DNS servers.
type dnsConfig struct {
	mode       string // --dns-mode
	resolvConf string // the resolver configuration, /etc/resolv.conf
	backup     string // where resolv.conf's original is kept
	link       string // the TUN, whose DNS settings resolved takes
}

func (c *upConfig) dnsConfig() dnsConfig {
	return dnsConfig{
		mode:       c.dnsMode,
		resolvConf: tun.ManagedResolvConf,
		backup:     filepath.Join(c.stateDir, tun.ResolvConfBackup),
		link:       c.tun,
	}
}

// runDNS applies each DNS configuration that arrives on updates (the
// latest one: a reconnect may bring another) until ctx is done. Failures
// are logged: the tunnel works without DNS of its own.
func runDNS(ctx context.Context, st *tun.State, statePath string, d dnsConfig, updates <-chan []netip.Addr, logger *slog.Logger) {
	for {
		var servers []netip.Addr
		select {
		case <-ctx.Done():
			return
		case servers = <-updates:
		}
		mode, err := applyDNS(ctx, st, statePath, d, servers, logger)
		if err != nil {
			if ctx.Err() == nil {
				logger.Warn("dns not applied", "mode", mode, "servers", servers, "err", err)
			}
			continue
		}
		logger.Info("dns applied", "mode", mode, "servers", servers)
	}
}

// applyDNS points the host's resolver at servers: through systemd-resolved
// or by rewriting resolv.conf, as d.mode says (auto: resolved where it
// manages DNS). The way is chosen at the first call and recorded in the
// state file before anything changes; later calls (a reconnect's servers)
// go the same way. It returns the way, "resolved" or "resolv.conf".
func applyDNS(ctx context.Context, st *tun.State, statePath string, d dnsConfig, servers []netip.Addr, logger *slog.Logger) (string, error) {
	if st.Resolved == nil && st.ResolvConf == nil {
		useResolved := d.mode == dnsResolved
		if d.mode == dnsAuto {
			dctx, cancel := context.WithTimeout(ctx, dnsDetectTimeout)
			err := tun.DetectResolved(dctx, d.resolvConf)
			cancel()
			useResolved = err == nil
			if err != nil {
				logger.Debug("dns not through systemd-resolved", "err", err)
			}
		}
		if useResolved {
			rl, err := tun.NewResolvedLink(d.link)
			if err != nil {
				return "resolved", err
			}
			st.Resolved = rl
		} else {
			st.ResolvConf = &tun.ResolvConf{Path: d.resolvConf, Backup: d.backup}
		}
		if err := tun.WriteState(statePath, st); err != nil {
			st.Resolved, st.ResolvConf = nil, nil
			return "", fmt.Errorf("write state: %w", err)
		}
	}
	if st.Resolved != nil {
		return "resolved", st.Resolved.Apply(ctx, servers)
	}
	return "resolv.conf", st.ResolvConf.Apply(servers)
}
