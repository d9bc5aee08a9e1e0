package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

func TestResolveUDP(t *testing.T) {
	c := validConfig()
	c.UDPIdleTimeout, c.UDPResolveTimeout = "2s", "500ms"
	c.UDPMaxFlowsPerConn, c.UDPMaxFlowsPerIdentity = 3, 7
	c.UDPAllow = map[string][]string{"alice": {"198.18.2.2:7"}, "*": {"*.example:53"}, "cert:laptop": {"198.18.2.2:9"}}
	c.UDPAnonymous = []string{"198.18.2.2:8443"}
	s, err := c.resolve()
	if err != nil {
		t.Fatalf("resolve = %v", err)
	}
	if s.UDPIdleTimeout != 2*time.Second || s.UDPResolveTimeout != 500*time.Millisecond || s.UDPMaxFlowsPerConn != 3 || s.UDPMaxFlowsPerIdentity != 7 {
		t.Errorf("udp settings = %v %v %d %d", s.UDPIdleTimeout, s.UDPResolveTimeout, s.UDPMaxFlowsPerConn, s.UDPMaxFlowsPerIdentity)
	}
	a := netip.MustParseAddr("198.18.2.2")
	if l, restricted := s.UDPRules.For("alice"); !restricted || !l.Allows("", a, 7) || l.Allows("", a, 8) {
		t.Errorf("alice's allow-list = %v, %v", l, restricted)
	}
	if l, restricted := s.UDPRules.For("cert:laptop"); !restricted || !l.Allows("", a, 9) || l.Allows("", a, 7) {
		t.Errorf("cert:laptop's allow-list = %v, %v", l, restricted)
	}
	if l, restricted := s.UDPRules.For("bob"); !restricted || !l.Allows("dns.example", a, 53) {
		t.Errorf("bob's allow-list (from *) = %v, %v", l, restricted)
	}
	if l, ok := s.UDPRules.Anonymous(); !ok || !l.Allows("", a, 8443) {
		t.Errorf("anonymous = %v, %v", l, ok)
	}

	d, err := func() (*settings, error) { c := validConfig(); return c.resolve() }()
	if err != nil {
		t.Fatal(err)
	}
	if d.UDPRules != nil || d.UDPIdleTimeout != 0 || d.UDPMaxFlowsPerConn != 0 {
		t.Errorf("defaults: rules %v idle %v flows %d; want nil, 0, 0 (tunnel's defaults)", d.UDPRules, d.UDPIdleTimeout, d.UDPMaxFlowsPerConn)
	}
}

func TestResolveUDPErrors(t *testing.T) {
	c := validConfig()
	c.UDPIdleTimeout = "soon"
	c.UDPResolveTimeout = "-1s"
	c.UDPMaxFlowsPerConn, c.UDPMaxFlowsPerIdentity = -1, -2
	c.UDPAllow = map[string][]string{"alice": {"198.18.2.2:0"}, "no spaces": {"*:*"}, "cert:": {"*:*"}, "tls:alice": {"*:*"}}
	c.UDPAnonymous = []string{"[::1]"}
	_, err := c.resolve()
	if err == nil {
		t.Fatal("resolve accepted bad CONNECT-UDP settings")
	}
	for _, want := range []string{"udp-idle-timeout", "udp-resolve-timeout", "udp-max-flows-per-conn", "udp-max-flows-per-identity",
		`udp-allow["alice"][0]`, `udp-allow["no spaces"]`, `udp-allow["cert:"]`, `udp-allow["tls:alice"]`, "udp-anonymous[0]"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

// TestUDPFlags: --udp-allow given on the command line and in the file
// adds to one map; the command line's other UDP flags win.
func TestUDPFlags(t *testing.T) {
	var (
		c    Config
		path string
	)
	cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
	l := newConfigLoader(cmd, &c, &path)
	file := filepath.Join(t.TempDir(), "m.conf")
	if err := os.WriteFile(file, []byte("cert = \"c\"\nkey = \"k\"\ntokens = \"t\"\nudp-allow = [\"carol=*:*\"]\nudp-idle-timeout = \"5m\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := cmd.ParseFlags([]string{"--config", file, "--udp-allow", "alice=198.18.2.2:7", "--udp-allow", "alice=*.example:53", "--udp-allow", "*=*:53",
		"--udp-allow", "cert:laptop=198.18.2.2:9",
		"--udp-anonymous", "198.18.2.2:8443", "--udp-idle-timeout", "2s", "--udp-max-flows-per-conn", "9"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.load()
	if err != nil {
		t.Fatal(err)
	}
	if got := c.UDPAllow; len(got) != 3 || len(got["alice"]) != 2 || got["*"][0] != "*:53" || got["cert:laptop"][0] != "198.18.2.2:9" {
		t.Errorf("udp-allow after flags = %v, want alice's two patterns, * and cert:laptop (the command line's)", got)
	}
	if s.UDPIdleTimeout != 2*time.Second || s.UDPMaxFlowsPerConn != 9 {
		t.Errorf("settings = %+v", s)
	}
	if err := cmd.ParseFlags([]string{"--udp-allow", "nopattern"}); err == nil {
		t.Error("--udp-allow without = accepted")
	}
}
