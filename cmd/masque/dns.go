package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
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
	// routes are the routes installed into the tunnel: a DNS server
	// outside them (say of a family the tunnel does not carry) would be
	// reached past the tunnel, so it is not applied.
	routes []netip.Prefix
	// minInterval is the least time between two changes; 0 means
	// dnsMinInterval.
	minInterval time.Duration
}

func (c *upConfig) dnsConfig() dnsConfig {
	return dnsConfig{
		mode:       c.dnsMode,
		resolvConf: tun.ManagedResolvConf,
		backup:     filepath.Join(c.stateDir, tun.ResolvConfBackup),
		link:       c.tun,
	}
}

// dnsMinInterval is the least time between two changes of the host's
// DNS configuration: a server that floods DNS_ASSIGN capsules (or
// reconnects in a loop) gets the host's resolver rewritten at most once
// per interval, with the latest servers.
const dnsMinInterval = 5 * time.Second

// runDNS applies each DNS configuration that arrives on updates (the
// latest one: a reconnect may bring another) until ctx is done: only the
// servers inside d.routes, only when they differ from what it applied
// last, and at most once per d.minInterval. Failures are logged: the
// tunnel works without DNS of its own.
func runDNS(ctx context.Context, st *tun.State, statePath string, d dnsConfig, updates <-chan []netip.Addr, logger *slog.Logger) {
	var (
		applied []netip.Addr
		last    time.Time
	)
	interval := d.minInterval
	if interval == 0 {
		interval = dnsMinInterval
	}
	for {
		var servers []netip.Addr
		select {
		case <-ctx.Done():
			return
		case servers = <-updates:
		}
		if wait := time.Until(last.Add(interval)); wait > 0 && !slices.Equal(routedDNS(servers, d.routes), applied) {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			select { // the latest configuration wins
			case servers = <-updates:
			default:
			}
		}
		servers = routedDNS(servers, d.routes)
		if len(servers) == 0 || slices.Equal(servers, applied) {
			continue
		}
		last = time.Now()
		mode, err := applyDNS(ctx, st, statePath, d, servers, logger)
		if err != nil {
			if ctx.Err() == nil {
				logger.Warn("dns not applied", "mode", mode, "servers", servers, "err", err)
			}
			continue
		}
		applied = servers
		logger.Info("dns applied", "mode", mode, "servers", servers)
	}
}

// routedDNS keeps the servers inside routes.
func routedDNS(servers []netip.Addr, routes []netip.Prefix) []netip.Addr {
	return slices.DeleteFunc(slices.Clone(servers), func(a netip.Addr) bool {
		return !slices.ContainsFunc(routes, func(p netip.Prefix) bool { return p.Contains(a) })
	})
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
