package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/masque-vpn/masque/tun"
)

// validUp returns options that validate, with a token file in dir.
func validUp(t *testing.T) upOptions {
	t.Helper()
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return upOptions{
		serverOptions: serverOptions{
			servers:        []string{"vpn.example.com:443"},
			tokenFile:      tok,
			connectTimeout: defaultConnectTimeout,
		},
		tun:      defaultTun,
		mtu:      defaultMTU,
		stateDir: t.TempDir(),
		logLevel: "info",
		dnsMode:  dnsAuto,
	}
}

var prefixEqual = cmpopts.EquateComparable(netip.Prefix{})

func TestUpValidate(t *testing.T) {
	tests := []struct {
		name  string
		mod   func(o *upOptions)
		check func(t *testing.T, c *upConfig)
	}{
		{"token", func(*upOptions) {}, func(t *testing.T, c *upConfig) {
			if c.token != "0123456789abcdef0123456789abcdef" || c.authorities[0] != "vpn.example.com:443" {
				t.Errorf("token %q, authorities %q", c.token, c.authorities)
			}
			if c.tls == nil || c.tls.ServerName != "" || len(c.tls.NextProtos) != 1 || c.tls.NextProtos[0] != "h3" {
				t.Errorf("tls = %+v", c.tls)
			}
		}},
		{"server name", func(o *upOptions) { o.servers, o.serverName = []string{"198.18.0.1:8443"}, "vpn.example.com" }, func(t *testing.T, c *upConfig) {
			if c.authorities[0] != "vpn.example.com:8443" || c.tls.ServerName != "vpn.example.com" {
				t.Errorf("authorities %q, server name %q", c.authorities, c.tls.ServerName)
			}
		}},
		{"IPv6 server", func(o *upOptions) { o.servers = []string{"[2001:db8::1]:443"} }, func(t *testing.T, c *upConfig) {
			if c.authorities[0] != "[2001:db8::1]:443" {
				t.Errorf("authorities %q", c.authorities)
			}
		}},
		{"routes and excludes", func(o *upOptions) {
			o.routes = []string{"198.18.0.0/15", "2001:db8::/32", "198.18.0.9"}
			o.excludes = []string{"198.18.0.0/24"}
		}, func(t *testing.T, c *upConfig) {
			want := []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("198.18.0.9/32")}
			if diff := cmp.Diff(want, c.routes, prefixEqual); diff != "" {
				t.Errorf("routes mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")}, c.excludes, prefixEqual); diff != "" {
				t.Errorf("excludes mismatch (-want +got):\n%s", diff)
			}
		}},
		{"MTU bounds", func(o *upOptions) { o.mtu = 1280 }, nil},
		{"accept-dns on for a full tunnel", func(o *upOptions) { o.acceptDNS = true }, func(t *testing.T, c *upConfig) {
			if !c.acceptDNS {
				t.Error("acceptDNS off for a full tunnel without --accept-dns")
			}
		}},
		{"accept-dns off with --route", func(o *upOptions) { o.acceptDNS, o.routes = true, []string{"10.99.0.0/16"} }, func(t *testing.T, c *upConfig) {
			if c.acceptDNS {
				t.Error("acceptDNS on with --route and without --accept-dns")
			}
		}},
		{"--accept-dns with --route", func(o *upOptions) {
			o.acceptDNS, o.acceptDNSSet, o.routes = true, true, []string{"10.99.0.0/16"}
		}, func(t *testing.T, c *upConfig) {
			if !c.acceptDNS {
				t.Error("acceptDNS off with --route --accept-dns")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := validUp(t)
			tt.mod(&o)
			c, err := o.validate()
			if err != nil {
				t.Fatalf("validate = %v", err)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func TestUpValidateErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	twoTokens := filepath.Join(t.TempDir(), "two")
	if err := os.WriteFile(twoTokens, []byte("aaaaaaaaaaaaaaaa bbbbbbbbbbbbbbbb\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		mod     func(o *upOptions)
		wantErr []string // each must appear in the error
	}{
		{"missing server", func(o *upOptions) { o.servers = nil }, []string{"--server is required"}},
		{"server without port", func(o *upOptions) { o.servers = []string{"vpn.example.com"} }, []string{"--server", "HOST:PORT"}},
		{"server without host", func(o *upOptions) { o.servers = []string{":443"} }, []string{"--server", "HOST:PORT"}},
		{"server without port number", func(o *upOptions) { o.servers = []string{"vpn.example.com:"} }, []string{"--server", "HOST:PORT"}},
		{"no authentication", func(o *upOptions) { o.tokenFile = "" }, []string{"need --token-file or --cert/--key"}},
		{"token and cert", func(o *upOptions) { o.cert, o.key = "c.crt", "c.key" }, []string{"exclusive"}},
		{"cert without key", func(o *upOptions) { o.tokenFile, o.cert = "", "c.crt" }, []string{"--cert and --key go together"}},
		{"key without cert", func(o *upOptions) { o.tokenFile, o.key = "", "c.key" }, []string{"--cert and --key go together"}},
		{"route with host bits", func(o *upOptions) { o.routes = []string{"198.18.0.1/15"} }, []string{`--route "198.18.0.1/15"`, "198.18.0.0/15"}},
		{"route garbage", func(o *upOptions) { o.routes = []string{"bad"} }, []string{`--route "bad"`}},
		{"exclude with host bits", func(o *upOptions) { o.excludes = []string{"2001:db8::1/32"} }, []string{`--exclude "2001:db8::1/32"`}},
		{"MTU too small", func(o *upOptions) { o.mtu = 1279 }, []string{"--mtu 1279"}},
		{"MTU too large", func(o *upOptions) { o.mtu = 65536 }, []string{"--mtu 65536"}},
		{"TUN name empty", func(o *upOptions) { o.tun = "" }, []string{"--tun"}},
		{"TUN name too long", func(o *upOptions) { o.tun = "masque-0123456789" }, []string{"--tun"}},
		{"connect timeout", func(o *upOptions) { o.connectTimeout = 0 }, []string{"--connect-timeout"}},
		{"negative connect timeout", func(o *upOptions) { o.connectTimeout = -time.Second }, []string{"--connect-timeout"}},
		{"log level", func(o *upOptions) { o.logLevel = "loud" }, []string{"--log-level"}},
		{"DNS mode", func(o *upOptions) { o.dnsMode = "resolvconf" }, []string{`--dns-mode "resolvconf"`, "auto, resolved or file"}},
		{"everything at once", func(o *upOptions) {
			*o = upOptions{routes: []string{"x"}, excludes: []string{"y"}, mtu: 1, logLevel: "z"}
		}, []string{"--server is required", "need --token-file", `--route "x"`, `--exclude "y"`, "--mtu 1", "--tun", "--connect-timeout", "--log-level", "--dns-mode"}},
		{"missing token file", func(o *upOptions) { o.tokenFile = missing }, []string{"--token-file"}},
		{"empty token file", func(o *upOptions) { o.tokenFile = empty }, []string{"--token-file", "one token"}},
		{"two tokens", func(o *upOptions) { o.tokenFile = twoTokens }, []string{"--token-file", "one token"}},
		{"missing CA", func(o *upOptions) { o.ca = missing }, []string{"--ca"}},
		{"CA not PEM", func(o *upOptions) { o.ca = notPEM }, []string{"--ca", "no PEM certificate"}},
		{"missing client certificate", func(o *upOptions) { o.tokenFile, o.cert, o.key = "", missing, missing }, []string{"--cert/--key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := validUp(t)
			tt.mod(&o)
			c, err := o.validate()
			if err == nil {
				t.Fatalf("validate = %+v, want errors %q", c, tt.wantErr)
			}
			if _, ok := errors.AsType[usageError](err); !ok {
				t.Errorf("validate = %T %v, want a usageError (exit code 2)", err, err)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("validate = %q, want it to mention %q", err, w)
				}
			}
		})
	}
}

func TestParseCIDR(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr string
	}{
		{"198.18.0.0/15", "198.18.0.0/15", ""},
		{"0.0.0.0/0", "0.0.0.0/0", ""},
		{"198.18.0.1", "198.18.0.1/32", ""},
		{"2001:db8::/32", "2001:db8::/32", ""},
		{"2001:db8::1", "2001:db8::1/128", ""},
		{"::/0", "::/0", ""},
		{"198.18.0.1/15", "", "did you mean 198.18.0.0/15"},
		{"2001:db8::1/32", "", "did you mean 2001:db8::/32"},
		{"198.18.0.0/33", "", "not a CIDR prefix"},
		{"", "", "not a CIDR prefix"},
		{"vpn.example.com", "", "not a CIDR prefix"},
		{"198.18.0.0/", "", "not a CIDR prefix"},
		{"fe80::/10%eth0", "", "not a CIDR prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseCIDR(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseCIDR(%q) = %v, %v, want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != netip.MustParsePrefix(tt.want) {
				t.Fatalf("parseCIDR(%q) = %v, %v, want %s", tt.in, got, err, tt.want)
			}
		})
	}
}

func FuzzParseCIDR(f *testing.F) {
	for _, s := range []string{"198.18.0.0/15", "198.18.0.1", "2001:db8::/32", "2001:db8::1/32", "::ffff:198.18.0.0/112", "fe80::1%eth0", "1.2.3.4/33", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := parseCIDR(s)
		if err != nil {
			return
		}
		if !p.IsValid() || p != p.Masked() || p.Addr().Zone() != "" {
			t.Fatalf("parseCIDR(%q) = %v: not a valid masked prefix", s, p)
		}
		back, err := parseCIDR(p.String())
		if err != nil || back != p {
			t.Fatalf("parseCIDR(%q) = %v, but parseCIDR(%q) = %v, %v", s, p, p.String(), back, err)
		}
	})
}

func TestFamiliesWith(t *testing.T) {
	p := netip.MustParsePrefix
	routes := []netip.Prefix{p("0.0.0.0/0"), p("::/0"), p("198.18.0.0/15"), p("2001:db8::/32")}
	tests := []struct {
		name  string
		addrs []netip.Prefix
		want  []netip.Prefix
	}{
		{"both", []netip.Prefix{p("100.64.0.2/32"), p("fd00:1::2/128")}, routes},
		{"IPv4 only", []netip.Prefix{p("100.64.0.2/32")}, []netip.Prefix{p("0.0.0.0/0"), p("198.18.0.0/15")}},
		{"IPv6 only", []netip.Prefix{p("fd00:1::2/128")}, []netip.Prefix{p("::/0"), p("2001:db8::/32")}},
		{"none", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := familiesWith(routes, tt.addrs)
			if diff := cmp.Diff(tt.want, got, prefixEqual); diff != "" {
				t.Errorf("familiesWith(%v) mismatch (-want +got):\n%s", tt.addrs, diff)
			}
		})
	}
	if got := familiesWith(nil, []netip.Prefix{p("100.64.0.2/32")}); len(got) != 0 {
		t.Errorf("familiesWith(no routes) = %v", got)
	}
}

func TestRecordSysctls(t *testing.T) {
	st := &tun.State{}
	if recordSysctls(st, nil) {
		t.Error("recordSysctls(nothing) = true, want false")
	}
	changed := map[string]string{"net/ipv6/conf/masque0/accept_ra": "1", "net/ipv4/conf/masque0/rp_filter": "2"}
	if !recordSysctls(st, changed) {
		t.Error("recordSysctls(new) = false, want true")
	}
	// A later change does not overwrite the value from before the first.
	if recordSysctls(st, map[string]string{"net/ipv6/conf/masque0/accept_ra": "0"}) {
		t.Error("recordSysctls(recorded) = true, want false")
	}
	if diff := cmp.Diff(changed, st.Sysctls); diff != "" {
		t.Errorf("Sysctls (-want +got):\n%s", diff)
	}
}

// TestDialErrorResolution: a name that does not resolve says so, not
// that the server timed out.
func TestDialErrorResolution(t *testing.T) {
	nx := fmt.Errorf("resolve nosuch.invalid:443: %w", &net.DNSError{Err: "no such host", Name: "nosuch.invalid", IsNotFound: true})
	if got := dialError("nosuch.invalid:443", time.Second, nx).Error(); got != "resolve nosuch.invalid: no such host (check --server)" {
		t.Errorf("dialError(NXDOMAIN) = %q", got)
	}
	slow := &net.DNSError{Err: "i/o timeout", Name: "vpn.example", Server: "192.0.2.53:53", IsTimeout: true}
	if got := dialError("vpn.example:443", time.Second, slow).Error(); got != "resolve vpn.example: the DNS server did not answer (192.0.2.53:53)" {
		t.Errorf("dialError(DNS timeout) = %q", got)
	}
	if got := dialError("198.18.1.2:443", time.Second, context.DeadlineExceeded).Error(); !strings.Contains(got, "timeout after 1s") {
		t.Errorf("dialError(timeout) = %q", got)
	}
}
