package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/masque-vpn/masque/cmd/internal/flagfile"
	"github.com/spf13/cobra"
)

// validConfig is the least a configuration needs.
func validConfig() Config { return Config{Cert: "server.crt", Key: "server.key", Tokens: "tokens"} }

// netipEqual compares net/netip values by ==.
var netipEqual = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{}, netip.AddrPort{})

func TestResolveDefaults(t *testing.T) {
	got, err := func() (*settings, error) { c := validConfig(); return c.resolve() }()
	if err != nil {
		t.Fatalf("resolve = %v", err)
	}
	want := &settings{
		Listen:       netip.MustParseAddrPort(defaultListen),
		Cert:         "server.crt",
		Key:          "server.key",
		Tokens:       "tokens",
		Pool4:        netip.MustParsePrefix(defaultPool4),
		Pool6:        netip.MustParsePrefix(defaultPool6),
		StateDir:     defaultStateDir,
		Tun:          defaultTun,
		MTU:          defaultMTU,
		LeaseTime:    defaultLeaseTime,
		LogLevel:     "info",
		DrainTimeout: defaultDrain,
	}
	if diff := cmp.Diff(want, got, netipEqual); diff != "" {
		t.Errorf("resolve defaults mismatch (-want +got):\n%s", diff)
	}
}

func TestResolve(t *testing.T) {
	pfx := netip.MustParsePrefix
	tests := []struct {
		name  string
		mod   func(c *Config)
		check func(t *testing.T, s *settings)
	}{
		{"port only", func(c *Config) { c.Listen = ":8443" }, func(t *testing.T, s *settings) {
			if s.Listen != netip.MustParseAddrPort("[::]:8443") {
				t.Errorf("Listen = %v, want [::]:8443", s.Listen)
			}
		}},
		{"IPv4 listen", func(c *Config) { c.Listen = "198.18.0.1:443" }, func(t *testing.T, s *settings) {
			if s.Listen != netip.MustParseAddrPort("198.18.0.1:443") {
				t.Errorf("Listen = %v", s.Listen)
			}
		}},
		{"client CA instead of tokens", func(c *Config) { c.Tokens, c.ClientCA = "", "ca.crt" }, func(t *testing.T, s *settings) {
			if s.ClientCA != "ca.crt" || s.Tokens != "" {
				t.Errorf("ClientCA, Tokens = %q, %q", s.ClientCA, s.Tokens)
			}
		}},
		{"IPv4 pool off", func(c *Config) { c.Pool4 = "off" }, func(t *testing.T, s *settings) {
			if s.Pool4.IsValid() || s.Pool6 != pfx(defaultPool6) {
				t.Errorf("Pool4, Pool6 = %v, %v", s.Pool4, s.Pool6)
			}
		}},
		{"IPv6 pool off", func(c *Config) { c.Pool6 = "off" }, func(t *testing.T, s *settings) {
			if s.Pool6.IsValid() || s.Pool4 != pfx(defaultPool4) {
				t.Errorf("Pool4, Pool6 = %v, %v", s.Pool4, s.Pool6)
			}
		}},
		{"smallest pools", func(c *Config) { c.Pool4, c.Pool6 = "198.18.0.0/30", "2001:db8::/126" }, func(t *testing.T, s *settings) {
			if s.Pool4 != pfx("198.18.0.0/30") || s.Pool6 != pfx("2001:db8::/126") {
				t.Errorf("Pool4, Pool6 = %v, %v", s.Pool4, s.Pool6)
			}
		}},
		{"MTU bounds", func(c *Config) { c.MTU = 1280 }, func(t *testing.T, s *settings) {
			if s.MTU != 1280 {
				t.Errorf("MTU = %d", s.MTU)
			}
		}},
		{"lists", func(c *Config) {
			c.DNS = []string{"198.18.0.53", "2001:db8::53"}
			c.Routes = []string{"198.18.0.0/15", "2001:db8::1"}
			c.Allow = []string{"169.254.0.0/16"}
			c.Deny = []string{"198.18.9.9"}
		}, func(t *testing.T, s *settings) {
			want := &settings{
				DNS:    []netip.Addr{netip.MustParseAddr("198.18.0.53"), netip.MustParseAddr("2001:db8::53")},
				Routes: []netip.Prefix{pfx("198.18.0.0/15"), pfx("2001:db8::1/128")},
				Allow:  []netip.Prefix{pfx("169.254.0.0/16")},
				Deny:   []netip.Prefix{pfx("198.18.9.9/32")},
			}
			got := &settings{DNS: s.DNS, Routes: s.Routes, Allow: s.Allow, Deny: s.Deny}
			if diff := cmp.Diff(want, got, netipEqual); diff != "" {
				t.Errorf("lists mismatch (-want +got):\n%s", diff)
			}
		}},
		{"durations and limits", func(c *Config) {
			c.LeaseTime, c.DrainTimeout, c.MaxConns, c.MaxSessionsPerConn = "1h30m", "250ms", 5, 1
		}, func(t *testing.T, s *settings) {
			if s.LeaseTime != 90*time.Minute || s.DrainTimeout != 250*time.Millisecond || s.MaxConns != 5 || s.MaxSessionsPerConn != 1 {
				t.Errorf("LeaseTime %v, DrainTimeout %v, MaxConns %d, MaxSessionsPerConn %d", s.LeaseTime, s.DrainTimeout, s.MaxConns, s.MaxSessionsPerConn)
			}
		}},
		{"server names", func(c *Config) {
			c.ServerNames = []string{"vpn.example", "VPN2.example.", "*.pool.example", "198.18.0.1", "2001:db8::1"}
		}, func(t *testing.T, s *settings) {
			if diff := cmp.Diff([]string{"vpn.example", "VPN2.example.", "*.pool.example", "198.18.0.1", "2001:db8::1"}, s.ServerNames); diff != "" {
				t.Errorf("ServerNames mismatch (-want +got):\n%s", diff)
			}
		}},
		{"15-character TUN name", func(c *Config) { c.Tun = "masqued-0123456" }, func(t *testing.T, s *settings) {
			if s.Tun != "masqued-0123456" {
				t.Errorf("Tun = %q", s.Tun)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.mod(&c)
			s, err := c.resolve()
			if err != nil {
				t.Fatalf("resolve = %v", err)
			}
			tt.check(t, s)
		})
	}
}

// problemFields returns the field of every line of a resolve error.
func problemFields(err error) []string {
	var fields []string
	for line := range strings.Lines(err.Error()) {
		f, _, _ := strings.Cut(line, ":")
		fields = append(fields, f)
	}
	return fields
}

func TestResolveErrors(t *testing.T) {
	tests := []struct {
		name  string
		mod   func(c *Config)
		field string // every reported problem names this field
	}{
		{"listen without port", func(c *Config) { c.Listen = "198.18.0.1" }, "listen"},
		{"listen host name", func(c *Config) { c.Listen = "localhost:443" }, "listen"},
		{"listen port 0", func(c *Config) { c.Listen = "198.18.0.1:0" }, "listen"},
		{"listen empty host port 0", func(c *Config) { c.Listen = ":0" }, "listen"},
		{"listen named port", func(c *Config) { c.Listen = ":https" }, "listen"},
		{"listen port too big", func(c *Config) { c.Listen = ":65536" }, "listen"},
		{"cert", func(c *Config) { c.Cert = "" }, "cert"},
		{"key", func(c *Config) { c.Key = "" }, "key"},
		{"no authentication", func(c *Config) { c.Tokens = "" }, "tokens"},
		{"pool4 host bits", func(c *Config) { c.Pool4 = "100.64.0.1/16" }, "pool4"},
		{"pool4 IPv6", func(c *Config) { c.Pool4 = "2001:db8::/64" }, "pool4"},
		{"pool4 too small", func(c *Config) { c.Pool4 = "198.18.0.0/31" }, "pool4"},
		{"pool4 garbage", func(c *Config) { c.Pool4 = "on" }, "pool4"},
		{"pool6 host bits", func(c *Config) { c.Pool6 = "fd00::1/64" }, "pool6"},
		{"pool6 IPv4", func(c *Config) { c.Pool6 = "100.64.0.0/16" }, "pool6"},
		{"pool6 mapped", func(c *Config) { c.Pool6 = "::ffff:100.64.0.0/112" }, "pool6"},
		{"pool6 too small", func(c *Config) { c.Pool6 = "fd00::/127" }, "pool6"},
		{"both pools off", func(c *Config) { c.Pool4, c.Pool6 = "off", "off" }, "pool4"},
		{"mtu too small", func(c *Config) { c.MTU = 1279 }, "mtu"},
		{"mtu too large", func(c *Config) { c.MTU = 2049 }, "mtu"},
		{"mtu negative", func(c *Config) { c.MTU = -1 }, "mtu"},
		{"dns name", func(c *Config) { c.DNS = []string{"198.18.0.53", "dns.example"} }, "dns[1]"},
		{"dns zone", func(c *Config) { c.DNS = []string{"fe80::53%eth0"} }, "dns[0]"},
		{"dns prefix", func(c *Config) { c.DNS = []string{"198.18.0.0/24"} }, "dns[0]"},
		{"route host bits", func(c *Config) { c.Routes = []string{"198.18.0.0/15", "198.18.0.1/15"} }, "route[1]"},
		{"route garbage", func(c *Config) { c.Routes = []string{"default"} }, "route[0]"},
		{"allow host bits", func(c *Config) { c.Allow = []string{"169.254.1.1/16"} }, "allow[0]"},
		{"deny garbage", func(c *Config) { c.Deny = []string{"10.0.0.0/33"} }, "deny[0]"},
		{"lease time zero", func(c *Config) { c.LeaseTime = "0s" }, "lease-time"},
		{"lease time negative", func(c *Config) { c.LeaseTime = "-1m" }, "lease-time"},
		{"lease time without unit", func(c *Config) { c.LeaseTime = "600" }, "lease-time"},
		{"drain timeout", func(c *Config) { c.DrainTimeout = "soon" }, "drain-timeout"},
		{"max conns", func(c *Config) { c.MaxConns = -1 }, "max-conns"},
		{"max sessions per conn", func(c *Config) { c.MaxSessionsPerConn = -1 }, "max-sessions-per-conn"},
		{"max sessions per identity", func(c *Config) { c.MaxSessionsPerIdentity = -3 }, "max-sessions-per-identity"},
		{"max conns per source", func(c *Config) { c.MaxConnsPerSource = -1 }, "max-conns-per-source"},
		{"max handshake rate", func(c *Config) { c.MaxHandshakeRate = -2 }, "max-handshake-rate"},
		{"retry threshold", func(c *Config) { c.RetryThreshold = -2 }, "retry-threshold"},
		{"request timeout", func(c *Config) { c.RequestTimeout = "0s" }, "request-timeout"},
		{"log level", func(c *Config) { c.LogLevel = "verbose" }, "log-level"},
		{"log level upper case", func(c *Config) { c.LogLevel = "INFO" }, "log-level"},
		{"metrics without port", func(c *Config) { c.Metrics = "127.0.0.1" }, "metrics"},
		{"pprof without metrics", func(c *Config) { c.Pprof = true }, "pprof"},
		{"tun too long", func(c *Config) { c.Tun = "masqued-01234567" }, "tun"},
		{"tun white space", func(c *Config) { c.Tun = " " }, "tun"},
		{"tun slash", func(c *Config) { c.Tun = "tun/0" }, "tun"},
		{"tun dot dot", func(c *Config) { c.Tun = ".." }, "tun"},
		{"egress colon", func(c *Config) { c.Egress = "eth0:1" }, "egress"},
		{"egress too long", func(c *Config) { c.Egress = "enp0s31f6-very-long" }, "egress"},
		{"listen garbage", func(c *Config) { c.Listen = "[::]:443:1" }, "listen"},
		{"allow IPv6 host bits", func(c *Config) { c.Allow = []string{"2001:db8::1/32"} }, "allow[0]"},
		{"deny zone", func(c *Config) { c.Deny = []string{"fe80::1%eth0"} }, "deny[0]"},
		{"lease time overflow", func(c *Config) { c.LeaseTime = "9999999999h" }, "lease-time"},
		{"drain timeout zero", func(c *Config) { c.DrainTimeout = "0" }, "drain-timeout"},
		{"metrics garbage", func(c *Config) { c.Metrics = "::9090" }, "metrics"},
		{"server name with space", func(c *Config) { c.ServerNames = []string{"vpn.example", "bad name"} }, "server-name[1]"},
		{"server name with port", func(c *Config) { c.ServerNames = []string{"vpn.example:443"} }, "server-name[0]"},
		{"server name with zone", func(c *Config) { c.ServerNames = []string{"fe80::1%eth0"} }, "server-name[0]"},
		{"server name in brackets", func(c *Config) { c.ServerNames = []string{"[2001:db8::1]"} }, "server-name[0]"},
		{"server name wildcard inside", func(c *Config) { c.ServerNames = []string{"a.*.example"} }, "server-name[0]"},
		{"server name empty", func(c *Config) { c.ServerNames = []string{""} }, "server-name[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.mod(&c)
			s, err := c.resolve()
			if err == nil {
				t.Fatalf("resolve = %+v, want an error about %s", s, tt.field)
			}
			for _, f := range problemFields(err) {
				if f != tt.field {
					t.Errorf("resolve = %q, want only problems with %s", err, tt.field)
				}
			}
		})
	}
}

// TestResolveReportsEverything checks that one bad value in every field
// yields one problem per field, all at once.
func TestResolveReportsEverything(t *testing.T) {
	c := Config{
		Listen:             "nowhere",
		Pool4:              "100.64.0.1/16",
		Pool6:              "100.64.0.0/16",
		MTU:                100,
		DNS:                []string{"x"},
		Routes:             []string{"y"},
		Allow:              []string{"z"},
		Deny:               []string{"w"},
		LeaseTime:          "forever",
		DrainTimeout:       "-1s",
		MaxConns:           -1,
		MaxSessionsPerConn: -1,
		LogLevel:           "loud",
		Metrics:            "9090",
		Tun:                "a-very-long-interface-name",
		ServerNames:        []string{"not a name"},
	}
	_, err := c.resolve()
	if err == nil {
		t.Fatal("resolve = nil error")
	}
	want := []string{
		"listen", "cert", "key", "tokens", "pool4", "pool6", "mtu", "dns[0]", "route[0]",
		"allow[0]", "deny[0]", "lease-time", "drain-timeout", "max-conns", "max-sessions-per-conn",
		"log-level", "metrics", "tun", "server-name[0]",
	}
	if diff := cmp.Diff(want, problemFields(err), cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
		t.Errorf("resolve problems mismatch (-want +got):\n%s\nerror:\n%v", diff, err)
	}
}

// FuzzConfigFile: whatever the file holds, loading it onto run's flags
// reports errors that name the file, and resolve does not panic on what
// loads.
func FuzzConfigFile(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte("listen = \"[::]:443\"\ncert = \"c\"\nkey = \"k\"\ntokens = \"t\"\nmtu = 1400\n"))
	f.Add([]byte("dns = [\"198.18.0.53\"]\nroute = []\nallow-client-to-client = true\n"))
	f.Add([]byte("pool4 = \"off\"\npool6 = \"off\"\nlease-time = \"10m\"\ndrain-timeout = \"5s\"\n"))
	f.Add([]byte("max-conns = -1\nlog-level = \"debug\"\nudp-allow = [\"alice=*:53\"]\n"))
	f.Add([]byte("lissen = 1\n[t]\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		cmd := &cobra.Command{}
		var c Config
		var path string
		serverFlags(cmd, &c, &path)
		errs := flagfile.ApplyTOML(cmd.Flags(), map[string]bool{}, []string{"config", "help"}, "f.conf", in)
		for _, err := range errs {
			if !strings.HasPrefix(err.Error(), "f.conf") {
				t.Fatalf("error without the file's name: %v", err)
			}
		}
		if len(errs) == 0 {
			_, _ = c.resolve()
		}
	})
}

// TestConfigFile: a TOML file sets run's flags by name (the command line
// wins), every problem is reported at once with its line and column, a
// JSON file is refused with a line saying how it is written now, and a
// reload forgets what the file no longer says.
func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "masqued.conf")
	write := func(body string) {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("listen = \"[::]:8443\"\ncert = \"/c\"\nkey = \"/k\"\ntokens = \"/t\"\nmtu = 1300\ndns = [\"198.18.0.53\"]\nlease-time = \"1h\"\nudp-allow = [\"alice=*:53\", \"alice=*:853\"]\n")
	cmd := &cobra.Command{}
	var c Config
	var p string
	l := newConfigLoader(cmd, &c, &p)
	if err := cmd.Flags().Parse([]string{"--config", path, "--mtu", "1280"}); err != nil {
		t.Fatal(err)
	}
	s, err := l.load()
	if err != nil {
		t.Fatalf("load = %v", err)
	}
	if s.Listen.Port() != 8443 || s.MTU != 1280 || s.LeaseTime != time.Hour || len(s.DNS) != 1 || s.Tokens != "/t" {
		t.Errorf("settings = %+v, want the file's listen, lease-time, dns and the command line's mtu", s)
	}
	if c.UDPAllow["alice"] == nil || len(c.UDPAllow["alice"]) != 2 {
		t.Errorf("udp-allow = %v, want alice's two patterns", c.UDPAllow)
	}
	// A reload: lease-time gone from the file goes back to its default,
	// and udp-allow does not pile up.
	write("cert = \"/c\"\nkey = \"/k\"\ntokens = \"/t\"\nudp-allow = [\"alice=*:53\"]\n")
	if s, err = l.load(); err != nil {
		t.Fatalf("reload = %v", err)
	}
	if s.LeaseTime != defaultLeaseTime || s.Listen.Port() != 443 || s.MTU != 1280 || len(c.UDPAllow["alice"]) != 1 {
		t.Errorf("after the reload: lease %v, listen %v, mtu %d, udp-allow %v", s.LeaseTime, s.Listen, s.MTU, c.UDPAllow)
	}
	write("lissen = \"x\"\nmtu = \"1400\"\nserver_name = [\"a\"]\n")
	_, err = l.load()
	for _, want := range []string{path + `:1:1: unknown key "lissen"`, path + ":2:1: mtu: want a number, not a string", path + `:3:1: unknown key "server_name" (did you mean "server-name"?)`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("load of a bad file = %v, want it to contain %q", err, want)
		}
	}
	write("{\"listen\": \"[::]:443\"}\n")
	if _, err = l.load(); err == nil || !strings.Contains(err.Error(), "this is JSON; the configuration is TOML now") {
		t.Errorf("load of a JSON file = %v", err)
	}
}

// TestNeedsRestart: a reload names the changed settings it cannot apply,
// and none of those it applies.
func TestNeedsRestart(t *testing.T) {
	c := validConfig()
	old, err := c.resolve()
	if err != nil {
		t.Fatal(err)
	}
	c.Deny = []string{"198.18.9.0/24"}
	c.AllowClientToClient = true
	c.MTU = 1300
	c.Listen = "[::]:8443"
	c.MaxSessionsPerIdentity = 3
	c.ServerNames = []string{"vpn.example"}
	nw, err := c.resolve()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"listen", "server-name", "mtu", "max-sessions-per-identity"}, needsRestart(old, nw)); diff != "" {
		t.Errorf("needsRestart mismatch (-want +got):\n%s", diff)
	}
	if got := needsRestart(old, old); len(got) != 0 {
		t.Errorf("needsRestart of the same settings = %v, want none", got)
	}
}
