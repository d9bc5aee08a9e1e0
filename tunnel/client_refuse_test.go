package tunnel

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	connectip "github.com/quic-go/connect-ip-go"
	"golang.org/x/time/rate"
)

// hostileAssignment is what a crafted server sends at the start of a
// session.
type hostileAssignment struct {
	addrs  []netip.Prefix
	routes []connectip.IPRoute
	dns    []netip.Addr
}

// connectHostile runs Connect, under policy pol, against a connect-ip-go
// proxy that sends a.
func connectHostile(t *testing.T, a hostileAssignment, pol ClientPolicy) (*Client, error) {
	t.Helper()
	qc, addr := dialConnectIPProxy(t, func(conn *connectip.Conn) {
		if conn.AssignAddresses(a.addrs) != nil || conn.AdvertiseRoute(a.routes) != nil {
			return
		}
		if len(a.dns) > 0 {
			ns := connectip.DNSNameserver{ServicePriority: 1}
			for _, d := range a.dns {
				if d.Is4() {
					ns.IPv4Addresses = append(ns.IPv4Addresses, d)
				} else {
					ns.IPv6Addresses = append(ns.IPv6Addresses, d)
				}
			}
			conn.SendDNSConfiguration([]connectip.DNSConfiguration{{Nameservers: []connectip.DNSNameserver{ns}}})
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Connect(ctx, ClientConfig{Conn: qc.Conn, Authority: addr, Policy: pol, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// TestConnectRefusesAssignment: Connect ends the session when the server
// assigns what the host must not take, and takes only host addresses
// otherwise.
func TestConnectRefusesAssignment(t *testing.T) {
	all4 := []connectip.IPRoute{route("0.0.0.0", "255.255.255.255", 0)}
	local := ClientPolicy{Local: prefixes("198.18.77.0/24")}
	tests := []struct {
		name  string
		addrs []netip.Prefix
		want  []netip.Prefix // nil: refused
	}{
		{"host address", prefixes("198.18.64.9/32"), prefixes("198.18.64.9/32")},
		{"prefix", prefixes("198.18.64.0/24", "2001:db8:64::/64"), prefixes("198.18.64.0/32", "2001:db8:64::/128")},
		{"loopback", prefixes("127.0.0.2/32"), nil},
		{"the server's address, loopback here", prefixes("127.0.0.1/32"), nil},
		{"the LAN", prefixes("198.18.77.128/25"), nil},
		{"multicast", prefixes("224.0.0.0/4"), nil},
		{"link-local", prefixes("198.18.64.9/32", "fe80::/64"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := connectHostile(t, hostileAssignment{addrs: tt.addrs, routes: all4}, local)
			if tt.want == nil {
				if !errors.Is(err, ErrAssignmentRefused) {
					t.Fatalf("Connect with %v assigned = %v, want ErrAssignmentRefused", tt.addrs, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Connect with %v assigned = %v", tt.addrs, err)
			}
			if got := c.Addresses(); !slices.Equal(got, tt.want) {
				t.Errorf("Addresses() = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestConnectRoutesAndDNSInPolicy: the routes and DNS servers a session
// takes are those the policy lets in.
func TestConnectRoutesAndDNSInPolicy(t *testing.T) {
	c, err := connectHostile(t, hostileAssignment{
		addrs: prefixes("198.18.64.9/32"),
		routes: []connectip.IPRoute{
			route("10.0.0.0", "10.255.255.255", 0),
			route("198.18.0.0", "198.19.255.255", 0),
			route("0.0.0.0", "9.255.255.255", protoUDP),
		},
		dns: addrs("127.0.0.53", "10.99.0.53", "198.18.2.53", "224.0.0.251"),
	}, ClientPolicy{Routes: prefixes("10.99.0.0/16", "198.18.2.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Routes(), prefixes("10.99.0.0/16", "198.18.2.0/24"); !slices.Equal(got, want) {
		t.Errorf("Routes() = %v, want %v", got, want)
	}
	want := addrs("10.99.0.53", "198.18.2.53")
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Equal(c.DNS(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("DNS() = %v, want %v", c.DNS(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCapsuleLogBudget: a flood of DNS_ASSIGN capsules, each naming other
// servers, costs the log a burst of lines, not a line per capsule.
func TestCapsuleLogBudget(t *testing.T) {
	logs := newRecordCounter(slog.NewTextHandler(io.Discard, nil))
	c := &Client{
		log:        slog.New(logs),
		routes:     prefixes("198.18.2.0/24"),
		capsuleLog: rate.NewLimiter(capsuleLogRate, capsuleLogBurst),
	}
	for i := range 3000 {
		c.takeDNS([]netip.Addr{netip.AddrFrom4([4]byte{198, 18, 2, byte(i)}), netip.MustParseAddr("127.0.0.53")}, true)
	}
	if info, _ := logs.counts(""); info > 2*capsuleLogBurst {
		t.Errorf("3000 DNS_ASSIGN capsules logged %d lines, want at most %d", info, 2*capsuleLogBurst)
	}
	if got := c.DNS(); !slices.Equal(got, []netip.Addr{netip.AddrFrom4([4]byte{198, 18, 2, byte(2999 % 256)})}) {
		t.Errorf("DNS() = %v after the flood, want the last routed server", got)
	}
	// Every capsule's loopback server is counted, though few are logged.
	if got := c.stats.refused[refusedDNS].Load(); got != 3000 {
		t.Errorf("refused dns_servers = %d, want 3000", got)
	}
}
