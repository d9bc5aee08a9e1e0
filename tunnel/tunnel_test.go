package tunnel

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/masque-vpn/masque/policy"
	"github.com/masque-vpn/masque/quicio"
	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/yosida95/uritemplate/v3"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// These tests run a real tunnel.Server behind a real quicio.Server on
// loopback QUIC, with in-memory TUN devices at both ends.

const testToken = "0123456789abcdef-test-token"

type testServer struct {
	addr string
	tls  *tls.Config // client config trusting the server
	srv  *Server
	qs   *quicio.Server
	dev  *tuntest.ChannelTUN
}

func selfSigned(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	cert, key := issueCert(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, nil, nil)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key}, pool
}

// issueCert makes a certificate from tmpl, valid from an hour ago for two
// hours, with a new P-256 key: signed by parent's key, or self-signed if
// parent is nil.
func issueCert(t testing.TB, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func startServer(t *testing.T, opts ...func(*ServerConfig)) *testServer {
	t.Helper()
	return startServerWith(t, nil, opts...)
}

// startServerWith is startServer with a hook that may change the
// destination policy's configuration.
func startServerWith(t *testing.T, destinations func(*policy.DestinationsConfig), opts ...func(*ServerConfig)) *testServer {
	t.Helper()
	return startServerTLS(t, destinations, nil, opts...)
}

// startServerTLS is startServerWith with a hook that may change the
// QUIC server's configuration (serveTestTLS).
func startServerTLS(t *testing.T, destinations func(*policy.DestinationsConfig), quicHook func(*quicio.Config), opts ...func(*ServerConfig)) *testServer {
	t.Helper()
	toks, err := policy.ParseTokens(strings.NewReader("alice " + testToken + "\nbob " + testToken + "-bob\n"))
	if err != nil {
		t.Fatal(err)
	}
	p4, err := policy.NewPool(netip.MustParsePrefix("100.64.0.0/24"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	p6, err := policy.NewPool(netip.MustParsePrefix("fd6d:6173:7175:6500::/64"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	dcfg := policy.DestinationsConfig{
		ServerAddrs:    []netip.Addr{netip.MustParseAddr("127.0.0.1"), p4.Gateway(), p6.Gateway()},
		ClientPrefixes: []netip.Prefix{p4.Prefix(), p6.Prefix()},
	}
	if destinations != nil {
		destinations(&dcfg)
	}
	dests, err := policy.NewDestinations(dcfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := ServerConfig{
		Auth:         &policy.Authenticator{Tokens: toks},
		Pool4:        p4,
		Pool6:        p6,
		Destinations: dests,
		DNS:          []netip.Addr{netip.MustParseAddr("198.18.2.53")},
		Logger:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, o := range opts {
		o(&cfg)
	}
	return serveTestTLS(t, cfg, quicHook)
}

// serveTest runs a Server with cfg (its Device a channel TUN) behind a
// quicio.Server on 127.0.0.1, with a self-signed certificate for
// "localhost", and stops both at the end of the test.
func serveTest(t testing.TB, cfg ServerConfig) *testServer {
	t.Helper()
	return serveTestTLS(t, cfg, nil)
}

// serveTestTLS is serveTest with a hook that may change the QUIC server's
// configuration: its TLS (to ask for client certificates) or its address.
func serveTestTLS(t testing.TB, cfg ServerConfig, quicHook func(*quicio.Config)) *testServer {
	t.Helper()
	dev := tuntest.NewChannelTUN()
	cfg.Device = dev.TUN()
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cert, pool := selfSigned(t)
	qcfg := quicio.Config{
		Addr:       "127.0.0.1:0",
		TLSConfig:  &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{http3.NextProtoH3}},
		QUICConfig: srv.QUICConfig(),
	}
	if quicHook != nil {
		quicHook(&qcfg)
	}
	qs, err := quicio.NewServer(qcfg, srv)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- qs.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		qs.Shutdown(ctx)
		<-served
		srv.Close()
		dev.TUN().Close()
		<-srv.TUNDone()
	})
	return &testServer{
		addr: qs.Addr().String(),
		tls:  &tls.Config{RootCAs: pool, NextProtos: []string{http3.NextProtoH3}},
		srv:  srv, qs: qs, dev: dev,
	}
}

type testClient struct {
	c      *Client
	qc     *quicio.ClientConn
	dev    *tuntest.ChannelTUN
	runErr chan error
	cancel context.CancelFunc
}

// dialTest opens a QUIC connection to a test server at addr (certificate
// for "localhost") and closes it at the end of the test.
func dialTest(t testing.TB, addr string, tc *tls.Config) *quicio.ClientConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	qc, err := quicio.Dial(ctx, quicio.DialConfig{Addr: addr, TLSConfig: tc, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qc.Close() })
	return qc
}

func (ts *testServer) connect(t *testing.T, token string) (*testClient, error) {
	t.Helper()
	qc := dialTest(t, ts.addr, ts.tls)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Connect(ctx, ClientConfig{Conn: qc.Conn, Authority: ts.addr, Token: token})
	if err != nil {
		qc.Close()
		return nil, err
	}
	dev := tuntest.NewChannelTUN()
	rctx, rcancel := context.WithCancel(context.Background())
	tc := &testClient{c: c, qc: qc, dev: dev, runErr: make(chan error, 1), cancel: rcancel}
	go func() { tc.runErr <- c.Run(rctx, dev.TUN()) }()
	t.Cleanup(func() {
		rcancel()
		<-tc.runErr
		dev.TUN().Close()
		qc.Close()
	})
	return tc, nil
}

// udp4 builds an IPv4/UDP packet with valid checksums.
func udp4(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 28+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	b[8] = 64
	b[9] = protoUDP
	s, d := src.As4(), dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[10:], checksum(b[:20], 0))
	u := b[20:]
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	var ph uint32
	ph += uint32(binary.BigEndian.Uint16(s[0:])) + uint32(binary.BigEndian.Uint16(s[2:]))
	ph += uint32(binary.BigEndian.Uint16(d[0:])) + uint32(binary.BigEndian.Uint16(d[2:]))
	ph += protoUDP + uint32(len(u))
	binary.BigEndian.PutUint16(u[6:], checksum(u, ph))
	return b
}

// udp6 builds an IPv6/UDP packet with a valid checksum.
func udp6(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 48+len(payload))
	binary.BigEndian.PutUint32(b, 6<<28)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	b[6] = protoUDP
	b[7] = 64
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	u := b[40:]
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	binary.BigEndian.PutUint16(u[6:], checksum(u, pseudoHeaderSum6(src, dst, protoUDP, len(u))))
	return b
}

func recv(t *testing.T, ch chan []byte, what string) []byte {
	t.Helper()
	select {
	case p := <-ch:
		return p
	case <-time.After(5 * time.Second):
		t.Fatalf("timeout waiting for %s", what)
		return nil
	}
}

func send(t *testing.T, ch chan []byte, p []byte) {
	t.Helper()
	select {
	case ch <- p:
	case <-time.After(5 * time.Second):
		t.Fatal("timeout handing a packet to the device")
	}
}

func addrOf(t *testing.T, c *Client, v4 bool) netip.Addr {
	t.Helper()
	for _, p := range c.Addresses() {
		if p.Addr().Is4() == v4 {
			return p.Addr()
		}
	}
	t.Fatalf("no address of that family in %v", c.Addresses())
	return netip.Addr{}
}

func TestTunnelCarriesPacketsBothWays(t *testing.T) {
	ts := startServer(t)
	tc, err := ts.connect(t, testToken)
	if err != nil {
		t.Fatal(err)
	}
	a4, a6 := addrOf(t, tc.c, true), addrOf(t, tc.c, false)
	if a4 != netip.MustParseAddr("100.64.0.2") || a6 != netip.MustParseAddr("fd6d:6173:7175:6500::2") {
		t.Errorf("addresses = %v, want 100.64.0.2 and fd6d:6173:7175:6500::2", tc.c.Addresses())
	}
	if got := tc.c.Routes(); len(got) != 2 || got[0].String() != "0.0.0.0/0" || got[1].String() != "::/0" {
		t.Errorf("routes = %v, want [0.0.0.0/0 ::/0]", got)
	}
	target4, target6 := netip.MustParseAddr("198.18.2.2"), netip.MustParseAddr("2001:db8:2::2")

	for _, tt := range []struct {
		name     string
		up, down []byte
	}{
		{"ipv4", udp4(a4, target4, 1000, 53, []byte("hello v4")), udp4(target4, a4, 53, 1000, []byte("reply v4"))},
		{"ipv6", udp6(a6, target6, 1000, 53, []byte("hello v6")), udp6(target6, a6, 53, 1000, []byte("reply v6"))},
	} {
		t.Run(tt.name, func(t *testing.T) {
			send(t, tc.dev.Outbound, tt.up)
			got := recv(t, ts.dev.Inbound, "packet at the server TUN")
			// The client decrements TTL / hop limit (RFC 9484 §4.3).
			h, ok := parseIPHeader(got)
			if !ok || h.src != mustHeader(t, tt.up).src || h.dst != mustHeader(t, tt.up).dst {
				t.Fatalf("server got %x, want a packet like %x", got, tt.up)
			}
			if string(got[h.hdrLen:]) != string(tt.up[h.hdrLen:]) {
				t.Errorf("payload changed: got %x, want %x", got[h.hdrLen:], tt.up[h.hdrLen:])
			}
			send(t, ts.dev.Outbound, tt.down)
			back := recv(t, tc.dev.Inbound, "reply at the client TUN")
			if string(back) != string(tt.down) {
				t.Errorf("client got %x, want %x", back, tt.down)
			}
		})
	}
	st := tc.c.Stats()
	if st.TxPackets != 2 || st.RxPackets != 2 {
		t.Errorf("client stats tx=%d rx=%d, want 2 and 2", st.TxPackets, st.RxPackets)
	}
	if dns := waitDNS(tc.c); len(dns) != 1 || dns[0] != netip.MustParseAddr("198.18.2.53") {
		t.Errorf("dns = %v, want [198.18.2.53]", dns)
	}
}

func waitDNS(c *Client) []netip.Addr {
	for range 100 {
		if d := c.DNS(); len(d) > 0 {
			return d
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func mustHeader(t *testing.T, p []byte) ipHeader {
	t.Helper()
	h, ok := parseIPHeader(p)
	if !ok {
		t.Fatalf("bad test packet %x", p)
	}
	return h
}

func TestTunnelRefusesDeniedDestinationWithICMP(t *testing.T) {
	ts := startServer(t)
	tc, err := ts.connect(t, testToken)
	if err != nil {
		t.Fatal(err)
	}
	a4 := addrOf(t, tc.c, true)
	for _, dst := range []string{"127.0.0.1", "169.254.169.254", "100.64.0.1"} {
		t.Run(dst, func(t *testing.T) {
			before := ts.srv.counters.drops[dropDestDenied].Load()
			send(t, tc.dev.Outbound, udp4(a4, netip.MustParseAddr(dst), 1000, 80, []byte("x")))
			icmp := recv(t, tc.dev.Inbound, "ICMP error at the client")
			h := mustHeader(t, icmp)
			if h.proto != protoICMP || icmp[h.hdrLen] != 3 || icmp[h.hdrLen+1] != 13 {
				t.Errorf("got %x, want ICMP type 3 code 13", icmp)
			}
			if got := ts.srv.counters.drops[dropDestDenied].Load(); got != before+1 {
				t.Errorf("destination_denied = %d, want %d", got, before+1)
			}
		})
	}
	select {
	case p := <-ts.dev.Inbound:
		t.Errorf("a denied packet reached the server TUN: %x", p)
	default:
	}
}

// TestTunnelNoICMPForBroadcast: a packet to a broadcast address, here the
// directed broadcast of one of the server's prefixes, is dropped without an
// ICMP error (RFC 1812 §4.3.2.7); the next denied packet, to loopback, is
// answered, so the first answer the client sees must be about loopback.
func TestTunnelNoICMPForBroadcast(t *testing.T) {
	ts := startServerWith(t, func(c *policy.DestinationsConfig) {
		c.ServerPrefixes = []netip.Prefix{netip.MustParsePrefix("198.18.2.1/24")}
	})
	tc, err := ts.connect(t, testToken)
	if err != nil {
		t.Fatal(err)
	}
	a4 := addrOf(t, tc.c, true)
	before := ts.srv.counters.drops[dropDestDenied].Load()
	for _, dst := range []string{"198.18.2.255", "255.255.255.255", "127.0.0.1"} {
		send(t, tc.dev.Outbound, udp4(a4, netip.MustParseAddr(dst), 1000, 80, []byte("x")))
	}
	icmp := recv(t, tc.dev.Inbound, "ICMP error at the client")
	h := mustHeader(t, icmp)
	if h.proto != protoICMP || len(icmp) < h.hdrLen+28 || icmp[h.hdrLen] != 3 || icmp[h.hdrLen+1] != 13 {
		t.Fatalf("got %x, want ICMP type 3 code 13", icmp)
	}
	if q := netip.AddrFrom4([4]byte(icmp[h.hdrLen+8+16 : h.hdrLen+8+20])); q != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("first ICMP error quotes a packet to %v, want 127.0.0.1 (broadcasts are not answered)", q)
	}
	if got := ts.srv.counters.drops[dropDestDenied].Load(); got != before+3 {
		t.Errorf("destination_denied = %d, want %d", got, before+3)
	}
	select {
	case p := <-tc.dev.Inbound:
		t.Errorf("another packet at the client: %x", p)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestTunnelRefusesWrongToken(t *testing.T) {
	ts := startServer(t)
	_, err := ts.connect(t, "not-the-right-token-at-all")
	re, ok := errors.AsType[*RefusedError](err)
	if !ok || re.Status != 401 {
		t.Fatalf("Connect with a wrong token = %v, want a RefusedError with status 401", err)
	}
	if got := ts.srv.counters.refused[refuseAuth].Load(); got != 1 {
		t.Errorf("refused unauthenticated = %d, want 1", got)
	}
	if ts.srv.Sessions() != 0 {
		t.Errorf("sessions = %d, want 0", ts.srv.Sessions())
	}
}

func TestTunnelTwoClientsGetTheirOwnTraffic(t *testing.T) {
	ts := startServer(t)
	alice, err := ts.connect(t, testToken)
	if err != nil {
		t.Fatal(err)
	}
	bob, err := ts.connect(t, testToken+"-bob")
	if err != nil {
		t.Fatal(err)
	}
	a, b := addrOf(t, alice.c, true), addrOf(t, bob.c, true)
	if a == b {
		t.Fatalf("both clients got %s", a)
	}
	target := netip.MustParseAddr("198.18.2.2")
	for i := range 20 {
		to := alice
		dst := a
		if i%2 == 1 {
			to, dst = bob, b
		}
		p := udp4(target, dst, 53, 1000, []byte{byte(i)})
		send(t, ts.dev.Outbound, p)
		got := recv(t, to.dev.Inbound, "reply at its client")
		if string(got) != string(p) {
			t.Fatalf("packet %d: client got %x, want %x", i, got, p)
		}
	}
	select {
	case p := <-alice.dev.Inbound:
		t.Errorf("alice got a stray packet %x", p)
	case p := <-bob.dev.Inbound:
		t.Errorf("bob got a stray packet %x", p)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestTunnelLeaseSurvivesReconnect(t *testing.T) {
	ts := startServer(t)
	first, err := ts.connect(t, testToken)
	if err != nil {
		t.Fatal(err)
	}
	a := addrOf(t, first.c, true)
	first.cancel()
	<-first.runErr
	first.runErr <- nil // for the cleanup
	first.qc.Close()
	waitSessions(t, ts.srv, 0)
	second, err := ts.connect(t, testToken)
	if err != nil {
		t.Fatal(err)
	}
	if got := addrOf(t, second.c, true); got != a {
		t.Errorf("address after reconnect = %s, want %s", got, a)
	}
}

func waitSessions(t *testing.T, s *Server, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.Sessions() != want {
		if time.Now().After(deadline) {
			t.Fatalf("sessions = %d, want %d", s.Sessions(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTunnelShutdownEndsClientSession(t *testing.T) {
	ts := startServer(t)
	tc, err := ts.connect(t, testToken)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	go ts.qs.Shutdown(ctx)
	select {
	case err := <-tc.runErr:
		if !errors.Is(err, ErrSessionClosed) {
			t.Errorf("Run = %v, want ErrSessionClosed", err)
		}
		tc.runErr <- err
	case <-time.After(5 * time.Second):
		t.Fatal("client did not notice the server shutting down")
	}
}

// dialConnectIPGo opens a CONNECT-IP session to ts with connect-ip-go's own
// client: our server must serve it like any RFC 9484 client.
func dialConnectIPGo(t *testing.T, ts *testServer) *connectip.Conn {
	t.Helper()
	qc := dialTest(t, ts.addr, ts.tls)
	h3 := (&http3.Transport{EnableDatagrams: true}).NewClientConn(qc.Conn)
	tmpl := uritemplate.MustNew("https://" + ts.addr + ipPath(ipScope{}))
	req, err := connectip.NewRequest(context.Background(), tmpl)
	if err != nil {
		t.Fatal(err)
	}
	req.Header().Set("Authorization", "Bearer "+testToken)
	conn, _, err := connectip.NewClientConn(h3).Dial(req)
	if err != nil {
		t.Fatalf("connect-ip-go Dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestTunnelHonoursAddressRequest(t *testing.T) {
	ts := startServer(t)
	conn := dialConnectIPGo(t, ts)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	first, err := conn.ReceiveAddressAssignment(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var old4, v6 netip.Addr
	for _, a := range first {
		if a.IPPrefix.Addr().Is4() {
			old4 = a.IPPrefix.Addr()
		} else {
			v6 = a.IPPrefix.Addr()
		}
	}
	if !old4.IsValid() || !v6.IsValid() {
		t.Fatalf("first assignment %v lacks an address of each family", first)
	}
	if _, err := conn.Routes(ctx); err != nil {
		t.Fatal(err)
	}
	want := netip.MustParseAddr("100.64.0.77")
	tests := []struct {
		ask  netip.Prefix
		want netip.Addr
	}{
		{netip.PrefixFrom(want, 32), want},                       // free: granted
		{netip.MustParsePrefix("10.9.9.9/32"), want},             // outside the pool: keeps what it has
		{netip.MustParsePrefix("0.0.0.0/32"), want},              // any: keeps what it has
		{netip.PrefixFrom(ts.srv.cfg.Pool4.Gateway(), 32), want}, // reserved: keeps what it has
	}
	for _, tt := range tests {
		if _, err := conn.RequestAddresses([]netip.Prefix{tt.ask}); err != nil {
			t.Fatal(err)
		}
		got, err := conn.ReceiveAddressAssignment(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var g4, g6 netip.Addr
		for _, a := range got {
			if a.IPPrefix.Addr().Is4() {
				g4 = a.IPPrefix.Addr()
			} else {
				g6 = a.IPPrefix.Addr()
			}
		}
		if g4 != tt.want || g6 != v6 {
			t.Errorf("request %s: assigned %v, want %s and %s", tt.ask, got, tt.want, v6)
		}
	}
	// The old address is no longer the session's: replies to it find no
	// session, replies to the new one arrive.
	target := netip.MustParseAddr("198.18.2.2")
	before := ts.srv.counters.drops[dropNoSession].Load()
	send(t, ts.dev.Outbound, udp4(target, old4, 53, 1000, []byte("old")))
	p := udp4(target, want, 53, 1000, []byte("new"))
	send(t, ts.dev.Outbound, p)
	buf := make([]byte, 2048)
	n, err := conn.ReadPacket(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:n]) != string(p) {
		t.Errorf("client got %x, want %x", buf[:n], p)
	}
	if got := ts.srv.counters.drops[dropNoSession].Load(); got != before+1 {
		t.Errorf("no_session drops = %d, want %d", got, before+1)
	}
}

// TestSessionLimits: sessions per connection and per identity are capped;
// a request over either cap is refused with 429 connection_limit_reached
// and counted under its own reason, other identities are unaffected, and
// a slot is free again once a session ends.
func TestSessionLimits(t *testing.T) {
	ts := startServer(t, func(c *ServerConfig) {
		c.MaxSessionsPerConn = 1
		c.MaxSessionsPerIdentity = 2
	})
	want429 := func(what string, err error) {
		t.Helper()
		re, ok := errors.AsType[*RefusedError](err)
		if !ok || re.Status != http.StatusTooManyRequests || !strings.Contains(re.ProxyStatus, "connection_limit_reached") {
			t.Fatalf("%s: %v, want 429 with connection_limit_reached", what, err)
		}
	}
	// Two requests on one connection, with connect-ip-go's client.
	qc := dialTest(t, ts.addr, ts.tls)
	cc, err := (&connectip.Transport{}).NewClientConn(qc.Conn)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := uritemplate.MustNew("https://" + ts.addr + IPPathPrefix + "*/*/")
	var rsps []*http.Response
	for range 2 {
		req, err := connectip.NewRequest(context.Background(), tmpl)
		if err != nil {
			t.Fatal(err)
		}
		req.Header().Set("Authorization", "Bearer "+testToken)
		c, rsp, err := cc.Dial(req)
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
		rsps = append(rsps, rsp)
	}
	if rsps[0] == nil || rsps[0].StatusCode != http.StatusOK || rsps[1] == nil || rsps[1].StatusCode != http.StatusTooManyRequests ||
		!strings.Contains(rsps[1].Header.Get("Proxy-Status"), "connection_limit_reached") {
		t.Fatalf("two sessions on one connection: %s %q then %s %q, want 200 then 429 connection_limit_reached", rsps[0].Status, rsps[0].Header.Get("Proxy-Status"), rsps[1].Status, rsps[1].Header.Get("Proxy-Status"))
	}
	a2, err := ts.connect(t, testToken)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ts.connect(t, testToken)
	want429("alice's third session", err)
	if _, err := ts.connect(t, testToken+"-bob"); err != nil {
		t.Fatalf("bob while alice is at her cap: %v", err)
	}
	r := &ts.srv.counters.refused
	if c, i := r[refuseConnLimit].Load(), r[refuseIdentityLimit].Load(); c != 1 || i != 1 {
		t.Errorf("refusals: conn_session_limit %d, identity_session_limit %d; want 1 and 1", c, i)
	}
	if got := gatherValue(t, ts.srv, "masque_tunnel_refused_requests_total", "identity_session_limit"); got != 1 {
		t.Errorf(`masque_tunnel_refused_requests_total{reason="identity_session_limit"} = %v, want 1`, got)
	}
	a2.qc.Close()
	waitFor(t, "alice's slot to be released", 5*time.Second, func() bool {
		ts.srv.mu.Lock()
		defer ts.srv.mu.Unlock()
		return ts.srv.perID["alice"] == 1
	})
	if _, err := ts.connect(t, testToken); err != nil {
		t.Errorf("alice after one of her sessions ended: %v", err)
	}
	if got := ts.srv.Sessions(); got != 3 {
		t.Errorf("sessions = %d, want 3 (alice 2, bob 1)", got)
	}
}

// connect-ip-go's client takes the capsules the server writes itself
// (control.go): the assignment, the routes and the DNS configuration.
func TestConnectIPGoClientReadsServerCapsules(t *testing.T) {
	ts := startServer(t)
	conn := dialConnectIPGo(t, ts)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	as, err := conn.ReceiveAddressAssignment(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range as {
		got = append(got, fmt.Sprintf("%d:%s", a.RequestID, a.IPPrefix))
	}
	if want := []string{"0:100.64.0.2/32", "0:fd6d:6173:7175:6500::2/128"}; !slices.Equal(got, want) {
		t.Errorf("assignment = %v, want %v", got, want)
	}
	routes, err := conn.Routes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 2 || routes[0].StartIP != netip.IPv4Unspecified() || routes[1].EndIP != netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") {
		t.Errorf("routes = %v, want all of IPv4 and IPv6", routes)
	}
	dns, err := conn.ReceiveDNSConfiguration(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(dns) != 1 || len(dns[0].Nameservers) != 1 || !slices.Equal(dns[0].Nameservers[0].IPv4Addresses, []netip.Addr{netip.MustParseAddr("198.18.2.53")}) ||
		dns[0].Nameservers[0].ServicePriority != 1 {
		t.Errorf("DNS configuration = %+v, want one nameserver 198.18.2.53 with priority 1", dns)
	}
}
