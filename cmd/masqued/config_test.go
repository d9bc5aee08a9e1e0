package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Config
	}{
		{"empty object", `{}`, Config{}},
		{"surrounding white space", " \n\t{}\n\n", Config{}},
		{"fields", `{
			"listen": "[::]:8443", "cert": "/etc/masqued/server.crt", "key": "/etc/masqued/server.key",
			"tokens": "/etc/masqued/tokens", "pool4": "100.64.0.0/16", "pool6": "off",
			"mtu": 1400, "dns": ["198.18.0.53", "2001:db8::53"], "routes": ["198.18.0.0/15"],
			"allow": ["169.254.0.0/16"], "deny": ["198.18.9.0/24"], "allow_client_to_client": true,
			"lease_time": "1h", "max_conns": 10, "max_sessions_per_conn": 2,
			"max_conns_per_source": 8, "max_handshake_rate": -1, "retry_threshold": -1,
			"max_sessions_per_identity": 3, "request_timeout": "2s",
			"metrics": "127.0.0.1:9090", "log_level": "debug", "drain_timeout": "3s"
		}`, Config{
			Listen: "[::]:8443", Cert: "/etc/masqued/server.crt", Key: "/etc/masqued/server.key",
			Tokens: "/etc/masqued/tokens", Pool4: "100.64.0.0/16", Pool6: "off",
			MTU: 1400, DNS: []string{"198.18.0.53", "2001:db8::53"}, Routes: []string{"198.18.0.0/15"},
			Allow: []string{"169.254.0.0/16"}, Deny: []string{"198.18.9.0/24"}, AllowClientToClient: true,
			LeaseTime: "1h", MaxConns: 10, MaxSessionsPerConn: 2,
			MaxConnsPerSource: 8, MaxHandshakeRate: -1, RetryThreshold: -1,
			MaxSessionsPerIdentity: 3, RequestTimeout: "2s",
			Metrics: "127.0.0.1:9090", LogLevel: "debug", DrainTimeout: "3s",
		}},
		{"exactly the size limit", `{"tun":"t0"}` + strings.Repeat(" ", maxConfigSize-len(`{"tun":"t0"}`)), Config{Tun: "t0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseConfig(strings.NewReader(tt.in))
			if err != nil {
				t.Fatalf("parseConfig = %v", err)
			}
			if diff := cmp.Diff(tt.want, *got); diff != "" {
				t.Errorf("parseConfig mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name, in, wantErr string
	}{
		{"empty", ``, "decode"},
		{"unknown key", `{"listen":"[::]:443","lissen":"x"}`, "unknown field"},
		{"unknown nested key", `{"dns":{"a":1}}`, "decode"},
		{"wrong type", `{"mtu":"1400"}`, "decode"},
		{"array", `[]`, "decode"},
		{"second object", `{} {}`, "data after"},
		{"trailing garbage", `{"mtu":1400} x`, "data after"},
		{"trailing string", `{} "x"`, "data after"},
		{"stray closing brace", `{"mtu":1400}}`, "data after"},
		{"stray closing bracket", `{}]`, "data after"},
		{"null", `null`, "want a JSON object"},
		{"truncated", `{"mtu":14`, "decode"},
		{"too large", `{}` + strings.Repeat(" ", maxConfigSize), "larger than"},
		{"YAML", "listen: \"[::]:443\"\ncert: /etc/masqued/server.crt\n", "want a JSON object"},
		{"byte order mark", "\xef\xbb\xbf{}", "want a JSON object"},
		{"binary", "\x00\x01\x02", "want a JSON object"},
		{"white space only", " \n\t ", "want a JSON object"},
		{"upper-case key", `{"LISTEN":"[::]:443"}`, `unknown field "LISTEN"`},
		{"mixed-case key", `{"cert":"c","Log_Level":"warn"}`, `unknown field "Log_Level"`},
		{"duplicate key", `{"mtu":1280,"mtu":1500}`, `field "mtu" given twice`},
		{"string for a number", `{"mtu":"1400"}`, "mtu"},
		{"fraction for an integer", `{"mtu":1400.5}`, "mtu"},
		{"integer overflow", `{"max_conns":1e30}`, "max_conns"},
		{"string for a bool", `{"pprof":"yes"}`, "pprof"},
		{"string for a list", `{"dns":"198.18.0.53"}`, "dns"},
		{"number in a list", `{"routes":[10]}`, "routes"},
		{"list for a map", `{"udp_allow":["alice=*:53"]}`, "udp_allow"},
		{"object for a string", `{"listen":{"addr":"[::]"}}`, "listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseConfig(strings.NewReader(tt.in))
			if err == nil {
				t.Fatalf("parseConfig(%.40q) = %+v, want error containing %q", tt.in, got, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseConfig(%.40q) = %v, want error containing %q", tt.in, err, tt.wantErr)
			}
		})
	}
}

func TestLoadConfig(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.json")
	_, err := loadConfig(missing)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("loadConfig(missing) = %v, want a not-exist error naming the file", err)
	}
}

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
		{"route host bits", func(c *Config) { c.Routes = []string{"198.18.0.0/15", "198.18.0.1/15"} }, "routes[1]"},
		{"route garbage", func(c *Config) { c.Routes = []string{"default"} }, "routes[0]"},
		{"allow host bits", func(c *Config) { c.Allow = []string{"169.254.1.1/16"} }, "allow[0]"},
		{"deny garbage", func(c *Config) { c.Deny = []string{"10.0.0.0/33"} }, "deny[0]"},
		{"lease time zero", func(c *Config) { c.LeaseTime = "0s" }, "lease_time"},
		{"lease time negative", func(c *Config) { c.LeaseTime = "-1m" }, "lease_time"},
		{"lease time without unit", func(c *Config) { c.LeaseTime = "600" }, "lease_time"},
		{"drain timeout", func(c *Config) { c.DrainTimeout = "soon" }, "drain_timeout"},
		{"max conns", func(c *Config) { c.MaxConns = -1 }, "max_conns"},
		{"max sessions per conn", func(c *Config) { c.MaxSessionsPerConn = -1 }, "max_sessions_per_conn"},
		{"max sessions per identity", func(c *Config) { c.MaxSessionsPerIdentity = -3 }, "max_sessions_per_identity"},
		{"max conns per source", func(c *Config) { c.MaxConnsPerSource = -1 }, "max_conns_per_source"},
		{"max handshake rate", func(c *Config) { c.MaxHandshakeRate = -2 }, "max_handshake_rate"},
		{"retry threshold", func(c *Config) { c.RetryThreshold = -2 }, "retry_threshold"},
		{"request timeout", func(c *Config) { c.RequestTimeout = "0s" }, "request_timeout"},
		{"log level", func(c *Config) { c.LogLevel = "verbose" }, "log_level"},
		{"log level upper case", func(c *Config) { c.LogLevel = "INFO" }, "log_level"},
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
		{"lease time overflow", func(c *Config) { c.LeaseTime = "9999999999h" }, "lease_time"},
		{"drain timeout zero", func(c *Config) { c.DrainTimeout = "0" }, "drain_timeout"},
		{"metrics garbage", func(c *Config) { c.Metrics = "::9090" }, "metrics"},
		{"server name with space", func(c *Config) { c.ServerNames = []string{"vpn.example", "bad name"} }, "server_names[1]"},
		{"server name with port", func(c *Config) { c.ServerNames = []string{"vpn.example:443"} }, "server_names[0]"},
		{"server name with zone", func(c *Config) { c.ServerNames = []string{"fe80::1%eth0"} }, "server_names[0]"},
		{"server name in brackets", func(c *Config) { c.ServerNames = []string{"[2001:db8::1]"} }, "server_names[0]"},
		{"server name wildcard inside", func(c *Config) { c.ServerNames = []string{"a.*.example"} }, "server_names[0]"},
		{"server name empty", func(c *Config) { c.ServerNames = []string{""} }, "server_names[0]"},
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
		"listen", "cert", "key", "tokens", "pool4", "pool6", "mtu", "dns[0]", "routes[0]",
		"allow[0]", "deny[0]", "lease_time", "drain_timeout", "max_conns", "max_sessions_per_conn",
		"log_level", "metrics", "tun", "server_names[0]",
	}
	if diff := cmp.Diff(want, problemFields(err), cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
		t.Errorf("resolve problems mismatch (-want +got):\n%s\nerror:\n%v", diff, err)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"listen":"[::]:443","cert":"c","key":"k","tokens":"t","mtu":1400}`))
	f.Add([]byte(`{"dns":["198.18.0.53"],"routes":[],"allow":null,"allow_client_to_client":true}`))
	f.Add([]byte(`{"pool4":"off","pool6":"off","lease_time":"10m","drain_timeout":"5s"}`))
	f.Add([]byte(`{"max_conns":-1,"log_level":"debug","metrics":":9090","tun":"\u00e9"}`))
	f.Add([]byte(`{"lissen":1}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := parseConfig(bytes.NewReader(in))
		if err != nil {
			return
		}
		// Every key it took is a field's exact name.
		var keys map[string]json.RawMessage
		if err := json.Unmarshal(in, &keys); err != nil {
			t.Fatalf("parseConfig took %q, which is no JSON object: %v", in, err)
		}
		for k := range keys {
			if !configKeys[k] {
				t.Fatalf("parseConfig took key %q", k)
			}
		}
		// resolve must not panic on anything that parses.
		_, _ = c.resolve()
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("json.Marshal(%+v) = %v", c, err)
		}
		if len(out) > maxConfigSize {
			return // escaping grew it past the limit
		}
		back, err := parseConfig(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("parseConfig(json.Marshal(parseConfig(%q)) = %s) = %v", in, out, err)
		}
		// omitempty drops empty lists, so nil and empty are the same.
		if diff := cmp.Diff(c, back, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("re-parsed config differs (-first +second):\n%s", diff)
		}
	})
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
	if diff := cmp.Diff([]string{"listen", "server_names", "mtu", "max_sessions_per_identity"}, needsRestart(old, nw)); diff != "" {
		t.Errorf("needsRestart mismatch (-want +got):\n%s", diff)
	}
	if got := needsRestart(old, old); len(got) != 0 {
		t.Errorf("needsRestart of the same settings = %v, want none", got)
	}
}
