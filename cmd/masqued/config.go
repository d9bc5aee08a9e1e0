package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/masque-vpn/masque/policy"
	"github.com/masque-vpn/masque/tun"
	"github.com/masque-vpn/masque/tunnel"
)

// Defaults of the server configuration.
const (
	defaultListen    = "[::]:443"
	defaultPool4     = "100.64.0.0/16"
	defaultPool6     = "fd6d:6173:7175:6500::/64"
	defaultTun       = "masqued0"
	defaultStateDir  = "/var/lib/masqued"
	defaultMTU       = 1400
	defaultLeaseTime = 10 * time.Minute
	defaultDrain     = 5 * time.Second
	nftTable         = tun.DefaultNATTable
)

// Config is masqued's configuration: run's flags are bound to its fields,
// and the configuration file (TOML, whose keys are the flags' names: see
// cmd/internal/flagfile) sets the flags the command line did not.
type Config struct {
	Listen              string
	Cert                string
	Key                 string
	ServerNames         []string // besides the certificate's SANs and the local address
	ClientCA            string
	Tokens              string
	Pool4               string // "off" disables IPv4
	Pool6               string // "off" disables IPv6
	Egress              string
	StateDir            string
	Tun                 string
	MTU                 int
	DNS                 []string
	Routes              []string
	Allow               []string
	Deny                []string
	AllowClientToClient bool
	LeaseTime           string
	MaxConns            int
	MaxSessionsPerConn  int

	// Admission; zero values mean quicio's and tunnel's defaults.
	MaxConnsPerSource      int
	MaxHandshakeRate       int // -1: no limit
	RetryThreshold         int // -1: always ask for Retry
	MaxSessionsPerIdentity int
	RequestTimeout         string

	Metrics      string
	Pprof        bool
	LogLevel     string
	DrainTimeout string

	// CONNECT-UDP (RFC 9298); zero values mean tunnel's defaults.
	UDPIdleTimeout         string
	UDPResolveTimeout      string
	UDPMaxFlowsPerConn     int
	UDPMaxFlowsPerIdentity int
	UDPAllow               map[string][]string // identity or "*" → HOST:PORT patterns
	UDPAnonymous           []string            // patterns open to requests without credentials
}

// settings is a validated Config with defaults filled in and values parsed.
type settings struct {
	Listen              netip.AddrPort
	Cert, Key           string
	ServerNames         []string // names and addresses clients may put in :authority, besides the certificate's
	ClientCA            string
	Tokens              string
	Pool4, Pool6        netip.Prefix // invalid when off
	Egress              string
	StateDir            string
	Tun                 string
	MTU                 int
	DNS                 []netip.Addr
	Routes              []netip.Prefix
	Allow, Deny         []netip.Prefix
	AllowClientToClient bool
	LeaseTime           time.Duration
	MaxConns            int
	MaxSessionsPerConn  int
	Metrics             string

	MaxConnsPerSource, MaxHandshakeRate, RetryThreshold int // 0: quicio's defaults
	MaxSessionsPerIdentity                              int // 0: tunnel's default
	RequestTimeout                                      time.Duration
	Pprof                                               bool
	LogLevel                                            string
	DrainTimeout                                        time.Duration

	UDPIdleTimeout, UDPResolveTimeout          time.Duration    // 0: tunnel's defaults
	UDPMaxFlowsPerConn, UDPMaxFlowsPerIdentity int              // 0: tunnel's defaults
	UDPRules                                   *policy.UDPRules // nil: no allow-lists, no anonymous access
}

// resolve fills defaults and validates c, reporting every problem at once
// with its field name. It does no I/O; the listen address must be an IP
// literal (or ":PORT").
func (c *Config) resolve() (*settings, error) {
	var errs []error
	bad := func(field string, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	s := &settings{
		Cert: c.Cert, Key: c.Key, ClientCA: c.ClientCA, Tokens: c.Tokens,
		Egress: c.Egress, StateDir: or(c.StateDir, defaultStateDir), Tun: or(c.Tun, defaultTun),
		MTU: c.MTU, AllowClientToClient: c.AllowClientToClient, MaxConns: c.MaxConns,
		MaxSessionsPerConn: c.MaxSessionsPerConn, Metrics: c.Metrics, Pprof: c.Pprof, LogLevel: or(c.LogLevel, "info"),
	}
	listen := or(c.Listen, defaultListen)
	if ap, err := netip.ParseAddrPort(listen); err == nil {
		s.Listen = ap
	} else if host, port, err := net.SplitHostPort(listen); err == nil && host == "" {
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			bad("listen", "bad port %q", port)
		}
		s.Listen = netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(p))
	} else {
		bad("listen", "%q is not ADDR:PORT", listen)
	}
	if s.Listen.IsValid() && s.Listen.Port() == 0 {
		bad("listen", "port 0")
	}
	if s.Cert == "" {
		bad("cert", "required")
	}
	if s.Key == "" {
		bad("key", "required")
	}
	for i, n := range c.ServerNames {
		if !tunnel.ValidServerName(n) {
			bad(fmt.Sprintf("server-name[%d]", i), "%q is not a DNS name, *.NAME or an IP address without a zone", n)
		}
	}
	s.ServerNames = c.ServerNames
	if s.Tokens == "" && s.ClientCA == "" {
		bad("tokens", "need --tokens or --client-ca (or both) to authenticate clients")
	}
	s.Pool4 = parsePool("pool4", or(c.Pool4, defaultPool4), true, bad)
	s.Pool6 = parsePool("pool6", or(c.Pool6, defaultPool6), false, bad)
	if !s.Pool4.IsValid() && !s.Pool6.IsValid() && c.Pool4 == "off" && c.Pool6 == "off" {
		bad("pool4", "both pools are off")
	}
	if s.MTU == 0 {
		s.MTU = defaultMTU
	}
	if s.MTU < 1280 || s.MTU > 2048 {
		bad("mtu", "%d is outside 1280-2048", s.MTU)
	}
	for i, d := range c.DNS {
		a, err := netip.ParseAddr(d)
		if err != nil || a.Zone() != "" {
			bad(fmt.Sprintf("dns[%d]", i), "%q is not an IP address", d)
			continue
		}
		s.DNS = append(s.DNS, a)
	}
	s.Routes = parsePrefixes("route", c.Routes, bad)
	s.Allow = parsePrefixes("allow", c.Allow, bad)
	s.Deny = parsePrefixes("deny", c.Deny, bad)
	s.LeaseTime = parseDuration("lease-time", c.LeaseTime, defaultLeaseTime, bad)
	s.DrainTimeout = parseDuration("drain-timeout", c.DrainTimeout, defaultDrain, bad)
	if s.MaxConns < 0 {
		bad("max-conns", "%d is negative", s.MaxConns)
	}
	if s.MaxSessionsPerConn < 0 {
		bad("max-sessions-per-conn", "%d is negative", s.MaxSessionsPerConn)
	}
	resolveAdmission(c, s, bad)
	resolveUDP(c, s, bad)
	switch s.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log-level", "%q is not debug, info, warn or error", s.LogLevel)
	}
	if s.Metrics != "" {
		if _, _, err := net.SplitHostPort(s.Metrics); err != nil {
			bad("metrics", "%q is not HOST:PORT", s.Metrics)
		}
	}
	if s.Pprof && s.Metrics == "" {
		bad("pprof", "needs metrics: profiles are served on the metrics listener")
	}
	if !validIfName(s.Tun) {
		bad("tun", "%q is not an interface name: 1-15 characters, none of them white space, '/' or ':'", s.Tun)
	}
	if s.Egress != "" && !validIfName(s.Egress) {
		bad("egress", "%q is not an interface name: 1-15 characters, none of them white space, '/' or ':'", s.Egress)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

// resolveAdmission fills the admission limits of s from c.
func resolveAdmission(c *Config, s *settings, bad func(string, string, ...any)) {
	s.MaxConnsPerSource, s.MaxHandshakeRate, s.RetryThreshold = c.MaxConnsPerSource, c.MaxHandshakeRate, c.RetryThreshold
	s.MaxSessionsPerIdentity = c.MaxSessionsPerIdentity
	if s.MaxConnsPerSource < 0 {
		bad("max-conns-per-source", "%d is negative", s.MaxConnsPerSource)
	}
	if s.MaxHandshakeRate < -1 {
		bad("max-handshake-rate", "%d: want a rate per second, or -1 for no limit", s.MaxHandshakeRate)
	}
	if s.RetryThreshold < -1 {
		bad("retry-threshold", "%d: want a number of handshakes, or -1 to always ask for Retry", s.RetryThreshold)
	}
	if s.MaxSessionsPerIdentity < 0 {
		bad("max-sessions-per-identity", "%d is negative", s.MaxSessionsPerIdentity)
	}
	s.RequestTimeout = parseDuration("request-timeout", c.RequestTimeout, 0, bad)
}

// resolveUDP fills the CONNECT-UDP settings of s from c.
func resolveUDP(c *Config, s *settings, bad func(string, string, ...any)) {
	s.UDPIdleTimeout = parseDuration("udp-idle-timeout", c.UDPIdleTimeout, 0, bad)
	s.UDPResolveTimeout = parseDuration("udp-resolve-timeout", c.UDPResolveTimeout, 0, bad)
	s.UDPMaxFlowsPerConn, s.UDPMaxFlowsPerIdentity = c.UDPMaxFlowsPerConn, c.UDPMaxFlowsPerIdentity
	if s.UDPMaxFlowsPerConn < 0 {
		bad("udp-max-flows-per-conn", "%d is negative", s.UDPMaxFlowsPerConn)
	}
	if s.UDPMaxFlowsPerIdentity < 0 {
		bad("udp-max-flows-per-identity", "%d is negative", s.UDPMaxFlowsPerIdentity)
	}
	if len(c.UDPAllow) == 0 && len(c.UDPAnonymous) == 0 {
		return
	}
	rules, err := policy.NewUDPRules(policy.UDPRulesConfig{Allow: c.UDPAllow, Anonymous: c.UDPAnonymous})
	if err != nil {
		// policy names the fields allow[...] and anonymous[...].
		for _, line := range strings.Split(err.Error(), "\n") {
			field, msg, _ := strings.Cut(line, ": ")
			bad("udp-"+field, "%s", msg)
		}
		return
	}
	s.UDPRules = rules
}

// udpAllowFlag is --udp-allow IDENTITY=PATTERN, repeatable, collected into
// a map like the file's udp-allow gives.
type udpAllowFlag struct{ m *map[string][]string }

func (f udpAllowFlag) String() string { return "" }
func (f udpAllowFlag) Type() string   { return "IDENTITY=PATTERN" }
func (f udpAllowFlag) Repeatable()    {} // a file's list sets each
func (f udpAllowFlag) Set(v string) error {
	id, pattern, ok := strings.Cut(v, "=")
	if !ok || id == "" || pattern == "" {
		return fmt.Errorf("%q is not IDENTITY=HOST:PORT", v)
	}
	if *f.m == nil {
		*f.m = map[string][]string{}
	}
	(*f.m)[id] = append((*f.m)[id], pattern)
	return nil
}

// validIfName reports whether the Linux kernel takes name as an interface
// name (net/core/dev.c dev_valid_name).
func validIfName(name string) bool {
	if name == "" || len(name) > 15 || name == "." || name == ".." {
		return false
	}
	for _, r := range name {
		if r == '/' || r == ':' || r <= ' ' || r == 0x7f || unicode.IsSpace(r) {
			return false
		}
	}
	return true
}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func parsePool(field, v string, v4 bool, bad func(string, string, ...any)) netip.Prefix {
	if v == "off" {
		return netip.Prefix{}
	}
	p, err := netip.ParsePrefix(v)
	switch {
	case err != nil:
		bad(field, "%q is not a CIDR prefix", v)
	case p != p.Masked():
		bad(field, "%s has host bits set (did you mean %s?)", p, p.Masked())
	case v4 && !p.Addr().Is4():
		bad(field, "%s is not IPv4", p)
	case !v4 && (!p.Addr().Is6() || p.Addr().Is4In6()):
		bad(field, "%s is not IPv6", p)
	case v4 && p.Bits() > 30, !v4 && p.Bits() > 126:
		bad(field, "%s is too small for a gateway and a client", p)
	default:
		return p
	}
	return netip.Prefix{}
}

func parsePrefixes(field string, vs []string, bad func(string, string, ...any)) []netip.Prefix {
	var out []netip.Prefix
	for i, v := range vs {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			if a, err2 := netip.ParseAddr(v); err2 == nil && a.Zone() == "" {
				p = netip.PrefixFrom(a, a.BitLen())
			} else {
				bad(fmt.Sprintf("%s[%d]", field, i), "%q is not a CIDR prefix", v)
				continue
			}
		}
		if p != p.Masked() {
			bad(fmt.Sprintf("%s[%d]", field, i), "%s has host bits set", p)
			continue
		}
		out = append(out, p)
	}
	return out
}

func parseDuration(field, v string, def time.Duration, bad func(string, string, ...any)) time.Duration {
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		bad(field, "%q is not a positive duration like 10m", v)
		return def
	}
	return d
}
