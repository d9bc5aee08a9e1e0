package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/masque-vpn/masque/quicio"
	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/yosida95/uritemplate/v3"
	"golang.org/x/net/dns/dnsmessage"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// TestClientAgainstConnectIPGoProxy runs our client against a plain
// connect-ip-go proxy behind http3.Server, the library's own encoders of
// ADDRESS_ASSIGN, ROUTE_ADVERTISEMENT and DNS_ASSIGN and its own datagram
// path: what any RFC 9484 server built on it sends.
func TestClientAgainstConnectIPGoProxy(t *testing.T) {
	myAddr := netip.MustParsePrefix("198.18.64.9/32")
	myAddr6 := netip.MustParsePrefix("2001:db8:64::9/128")
	target := netip.MustParseAddr("198.18.2.2")
	routes := []connectip.IPRoute{
		{StartIP: netip.MustParseAddr("198.18.2.0"), EndIP: netip.MustParseAddr("198.18.2.255")},
		{StartIP: netip.MustParseAddr("198.18.4.0"), EndIP: netip.MustParseAddr("198.18.5.255")},
		{StartIP: netip.MustParseAddr("2001:db8:2::"), EndIP: netip.MustParseAddr("2001:db8:2::ffff")},
	}
	dns := []connectip.DNSConfiguration{{
		Nameservers: []connectip.DNSNameserver{
			{ServicePriority: 1, IPv4Addresses: []netip.Addr{netip.MustParseAddr("198.18.2.53")}, IPv6Addresses: []netip.Addr{netip.MustParseAddr("2001:db8:2::53")},
				AuthenticationDomainName: "dns.example", ServiceParameters: map[dnsmessage.SVCParamKey][]byte{1: []byte("\x02h2")}},
			{ServicePriority: 2, IPv4Addresses: []netip.Addr{netip.MustParseAddr("198.18.2.54")}},
		},
		InternalDomains: []string{"corp.example"},
		SearchDomains:   []string{"example"},
	}}
	echoed := make(chan error, 1)
	qc, addr := dialConnectIPProxy(t, func(conn *connectip.Conn) {
		if err := conn.AssignAddresses([]netip.Prefix{myAddr, myAddr6}); err != nil {
			echoed <- err
			return
		}
		if err := conn.AdvertiseRoute(routes); err != nil {
			echoed <- err
			return
		}
		if err := conn.SendDNSConfiguration(dns); err != nil {
			echoed <- err
			return
		}
		// Echo one packet with source and destination swapped.
		buf := make([]byte, 2048)
		n, err := conn.ReadPacket(buf)
		if err != nil {
			echoed <- err
			return
		}
		h, _ := parseIPHeader(buf[:n])
		reply := udp4(h.dst, h.src, 53, 1000, []byte("pong"))
		_, err = conn.WritePacket(reply)
		echoed <- err
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Connect(ctx, ClientConfig{Conn: qc.Conn, Authority: addr})
	if err != nil {
		t.Fatalf("Connect to connect-ip-go's proxy: %v", err)
	}
	if got := c.Addresses(); !slices.Equal(got, []netip.Prefix{myAddr, myAddr6}) {
		t.Errorf("Addresses() = %v, want %v and %v", got, myAddr, myAddr6)
	}
	wantRoutes := []netip.Prefix{
		netip.MustParsePrefix("198.18.2.0/24"), netip.MustParsePrefix("198.18.4.0/23"), netip.MustParsePrefix("2001:db8:2::/112"),
	}
	if got := c.Routes(); !slices.Equal(got, wantRoutes) {
		t.Errorf("Routes() = %v, want %v", got, wantRoutes)
	}

	dev := tuntest.NewChannelTUN()
	runErr := make(chan error, 1)
	rctx, rcancel := context.WithCancel(context.Background())
	go func() { runErr <- c.Run(rctx, dev.TUN()) }()
	defer func() {
		rcancel()
		<-runErr
		dev.TUN().Close()
	}()
	ping := udp4(myAddr.Addr(), target, 1000, 53, []byte("ping"))
	send(t, dev.Outbound, ping)
	select {
	case err := <-echoed:
		if err != nil {
			t.Fatalf("proxy: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the proxy did not get the packet")
	}
	got := recv(t, dev.Inbound, "the proxy's reply")
	// connect-ip-go forwards like a router: one less TTL, new checksum.
	if h, ok := parseIPHeader(got); !ok || h.src != target || h.dst != myAddr.Addr() || string(got[len(got)-4:]) != "pong" {
		t.Errorf("client got %x, want the proxy's pong from %s to %s", got, target, myAddr.Addr())
	}
	// DNS_ASSIGN may trail the route advertisement: wait for it.
	wantDNS := []netip.Addr{netip.MustParseAddr("198.18.2.53"), netip.MustParseAddr("2001:db8:2::53"), netip.MustParseAddr("198.18.2.54")}
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Equal(c.DNS(), wantDNS) {
		if time.Now().After(deadline) {
			t.Fatalf("DNS() = %v, want %v", c.DNS(), wantDNS)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dialConnectIPProxy runs connect-ip-go's proxy on loopback QUIC, hands
// each session to serve (the session lasts until its request ends), and
// dials it: it returns the connection, closed at the test's end, and the
// authority to use.
func dialConnectIPProxy(t *testing.T, serve func(conn *connectip.Conn)) (*quicio.ClientConn, string) {
	t.Helper()
	return dialConnectIPProxyTemplate(t, func(addr string) string { return "https://" + addr + ipPath(ipScope{}) }, serve)
}

// dialConnectIPProxyTemplate is dialConnectIPProxy with the proxy's URI
// template made by tmplFor from its address.
func dialConnectIPProxyTemplate(t *testing.T, tmplFor func(addr string) string, serve func(conn *connectip.Conn)) (*quicio.ClientConn, string) {
	t.Helper()
	cert, pool := selfSigned(t)
	ln, err := quic.ListenAddr("127.0.0.1:0",
		&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{http3.NextProtoH3}},
		&quic.Config{EnableDatagrams: true})
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	tmpl := uritemplate.MustNew(tmplFor(addr))
	srv := &http3.Server{EnableDatagrams: true, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := connectip.ParseProxyRequest(r, tmpl); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		var p connectip.Proxy
		conn, err := p.Proxy(w, &connectip.ProxyRequest{})
		if err != nil {
			return
		}
		defer conn.Close()
		serve(conn)
		<-r.Context().Done()
	})}
	go srv.ServeListener(ln)
	t.Cleanup(func() { srv.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	qc, err := quicio.Dial(ctx, quicio.DialConfig{Addr: addr, TLSConfig: &tls.Config{RootCAs: pool, NextProtos: []string{http3.NextProtoH3}}, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qc.Close() })
	return qc, addr
}

// TestClientTemplateAuthority: a connect-ip-go proxy whose template names
// its IP address refuses (400) a request whose :authority is the name the
// user dialled, and takes the one made from the template.
func TestClientTemplateAuthority(t *testing.T) {
	proxy := func() (*quicio.ClientConn, string) {
		var tmpl string
		qc, _ := dialConnectIPProxyTemplate(t, func(addr string) string {
			tmpl = "https://" + addr + "/vpn" // connect-ip-go takes templates without variables
			return tmpl
		}, func(conn *connectip.Conn) {
			conn.AssignAddresses([]netip.Prefix{netip.MustParsePrefix("198.18.64.9/32")})
			conn.AdvertiseRoute([]connectip.IPRoute{{StartIP: netip.MustParseAddr("0.0.0.0"), EndIP: netip.MustParseAddr("255.255.255.255")}})
		})
		return qc, tmpl
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	qc, _ := proxy()
	_, err := Connect(ctx, ClientConfig{Conn: qc.Conn, Authority: "vpn.example:443"})
	if re, ok := errors.AsType[*RefusedError](err); !ok || re.Status != http.StatusBadRequest {
		t.Fatalf("Connect with :authority vpn.example:443 = %v, want the proxy's 400", err)
	}
	qc, tmpl := proxy()
	c, err := Connect(ctx, ClientConfig{Conn: qc.Conn, Authority: "vpn.example:443", Template: tmpl})
	if err != nil {
		t.Fatalf("Connect with the template = %v", err)
	}
	defer c.Close()
	if got := c.Addresses(); len(got) != 1 || got[0] != netip.MustParsePrefix("198.18.64.9/32") {
		t.Errorf("Addresses() = %v", got)
	}
}
