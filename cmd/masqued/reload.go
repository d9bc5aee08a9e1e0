package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	"github.com/masque-vpn/masque/policy"
	"github.com/masque-vpn/masque/tunnel"
)

// reloadConfig is SIGHUP: it reads the configuration again (file, then the
// same flags) and applies what can change without dropping a session: the
// tokens file, the destination policy (allow, deny,
// allow_client_to_client; also this host's addresses, read afresh) and the
// CONNECT-UDP rules. Sessions stay up and follow the new policy from
// their next packet; CONNECT-UDP flows it refuses are closed. A
// configuration or tokens file that does not load changes nothing. Other
// changed settings are named in the log: they take a restart. It reports
// whether the configuration was applied.
func reloadConfig(s *settings, reload func() (*settings, error), m *material, app *tunnel.Server, tunAddrs []netip.Prefix, logger *slog.Logger) bool {
	ns, err := reload()
	if err != nil {
		logger.Error("reload: nothing changed", "err", err)
		return false
	}
	var toks *policy.Tokens
	if ns.Tokens != "" {
		if m.auth.Tokens == nil {
			logger.Error("reload: nothing changed", "err", "tokens: a tokens file added to a running server takes a restart")
			return false
		}
		if toks, err = policy.LoadTokens(ns.Tokens); err != nil {
			logger.Error("reload: nothing changed", "err", err)
			return false
		}
	} else if m.auth.Tokens != nil {
		logger.Error("reload: nothing changed", "err", "tokens: removing the tokens file takes a restart")
		return false
	}
	dests, err := destinations(ns, tunAddrs)
	if err != nil {
		logger.Error("reload: nothing changed", "err", fmt.Errorf("destinations: %w", err))
		return false
	}
	if toks != nil {
		m.auth.Tokens.Replace(toks)
	}
	closed := app.SetPolicy(dests, ns.UDPRules)
	s.Tokens, s.Allow, s.Deny, s.AllowClientToClient, s.UDPRules = ns.Tokens, ns.Allow, ns.Deny, ns.AllowClientToClient, ns.UDPRules
	attrs := []any{"allow", len(ns.Allow), "deny", len(ns.Deny), "allow_client_to_client", ns.AllowClientToClient, "udp_flows_closed", closed}
	if toks != nil {
		attrs = append(attrs, "tokens", toks.Len())
	}
	logger.Info("reload: configuration applied", attrs...)
	if restart := needsRestart(s, ns); len(restart) > 0 {
		logger.Warn("reload: changed settings take a restart", "settings", strings.Join(restart, ","))
	}
	return true
}

// needsRestart names the settings that differ between the running server's
// and a reloaded configuration and that a reload does not apply.
func needsRestart(old, new *settings) []string {
	var out []string
	diff := func(name string, changed bool) {
		if changed {
			out = append(out, name)
		}
	}
	diff("listen", old.Listen != new.Listen)
	diff("cert", old.Cert != new.Cert)
	diff("key", old.Key != new.Key)
	diff("server-name", !slices.Equal(old.ServerNames, new.ServerNames))
	diff("client-ca", old.ClientCA != new.ClientCA)
	diff("pool4", old.Pool4 != new.Pool4)
	diff("pool6", old.Pool6 != new.Pool6)
	diff("egress", old.Egress != new.Egress)
	diff("state-dir", old.StateDir != new.StateDir)
	diff("tun", old.Tun != new.Tun)
	diff("mtu", old.MTU != new.MTU)
	diff("dns", !slices.Equal(old.DNS, new.DNS))
	diff("routes", !slices.Equal(old.Routes, new.Routes))
	diff("lease-time", old.LeaseTime != new.LeaseTime)
	diff("max-conns", old.MaxConns != new.MaxConns)
	diff("max-sessions-per-conn", old.MaxSessionsPerConn != new.MaxSessionsPerConn)
	diff("max-conns-per-source", old.MaxConnsPerSource != new.MaxConnsPerSource)
	diff("max-handshake-rate", old.MaxHandshakeRate != new.MaxHandshakeRate)
	diff("retry-threshold", old.RetryThreshold != new.RetryThreshold)
	diff("max-sessions-per-identity", old.MaxSessionsPerIdentity != new.MaxSessionsPerIdentity)
	diff("request-timeout", old.RequestTimeout != new.RequestTimeout)
	diff("metrics", old.Metrics != new.Metrics)
	diff("pprof", old.Pprof != new.Pprof)
	diff("log-level", old.LogLevel != new.LogLevel)
	diff("drain-timeout", old.DrainTimeout != new.DrainTimeout)
	diff("udp-idle-timeout", old.UDPIdleTimeout != new.UDPIdleTimeout)
	diff("udp-resolve-timeout", old.UDPResolveTimeout != new.UDPResolveTimeout)
	diff("udp-max-flows-per-conn", old.UDPMaxFlowsPerConn != new.UDPMaxFlowsPerConn)
	diff("udp-max-flows-per-identity", old.UDPMaxFlowsPerIdentity != new.UDPMaxFlowsPerIdentity)
	return out
}
