package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/masque-vpn/masque/policy"
	"github.com/masque-vpn/masque/quicio"
	"github.com/prometheus/client_golang/prometheus"
	masque "github.com/quic-go/masque-go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/yosida95/uritemplate/v3"
	"go.uber.org/goleak"
)

// These tests run CONNECT-UDP through a real Server behind a real
// quicio.Server on loopback QUIC. Targets live on 127.0.0.2, which the
// test's destination policy allows; 127.0.0.1 is the "server's address".

var udpTargetAddr = netip.MustParseAddr("127.0.0.2")

// checkLeaks fails t if goroutines started during t outlive it. Call it
// first, so that it runs after every other Cleanup.
func checkLeaks(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

type udpTestServer struct {
	addr string
	tls  *tls.Config
	srv  *Server

	mu  sync.Mutex
	h3s map[*quicio.ClientConn]*masque.ClientConn // one HTTP/3 client per QUIC connection
}

// fakeLookup resolves the test names: *.target.test to 127.0.0.2,
// loop.test to loopback, nx.test fails, slow.test never answers.
func fakeLookup(ctx context.Context, host string) ([]netip.Addr, error) {
	switch {
	case strings.HasSuffix(host, "target.test"):
		return []netip.Addr{udpTargetAddr}, nil
	case host == "loop.test":
		return []netip.Addr{netip.MustParseAddr("127.0.0.3")}, nil
	case host == "mixed.test":
		return []netip.Addr{netip.MustParseAddr("169.254.169.254"), udpTargetAddr}, nil
	case host == "slow.test":
		<-ctx.Done()
		return nil, ctx.Err()
	default:
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
}

func startUDPServer(t testing.TB, ucfg UDPConfig, opts ...func(*ServerConfig)) *udpTestServer {
	t.Helper()
	toks, err := policy.ParseTokens(strings.NewReader("alice " + testToken + "\nbob " + testToken + "-bob\n"))
	if err != nil {
		t.Fatal(err)
	}
	p4, err := policy.NewPool(netip.MustParsePrefix("100.64.0.0/24"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	dests, err := policy.NewDestinations(policy.DestinationsConfig{
		ServerAddrs:    []netip.Addr{netip.MustParseAddr("127.0.0.1"), p4.Gateway()},
		ClientPrefixes: []netip.Prefix{p4.Prefix()},
		Allow:          []netip.Prefix{netip.PrefixFrom(udpTargetAddr, 32)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if ucfg.Lookup == nil {
		ucfg.Lookup = fakeLookup
	}
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	if _, ok := t.(*testing.B); ok {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg := ServerConfig{
		Auth:         &policy.Authenticator{Tokens: toks},
		Pool4:        p4,
		Destinations: dests,
		UDP:          ucfg,
		Logger:       logger,
	}
	for _, o := range opts {
		o(&cfg)
	}
	ts := serveTest(t, cfg)
	return &udpTestServer{addr: ts.addr, tls: ts.tls, srv: ts.srv}
}

func (ts *udpTestServer) dial(t testing.TB) *quicio.ClientConn {
	t.Helper()
	return dialTest(t, ts.addr, ts.tls)
}

// masqueDial opens a flow with masque-go's client, as a third-party client
// would.
func (ts *udpTestServer) masqueDial(t *testing.T, qc *quicio.ClientConn, token, target string) (*masque.Conn, *http.Response, error) {
	t.Helper()
	ts.mu.Lock()
	if ts.h3s == nil {
		ts.h3s = make(map[*quicio.ClientConn]*masque.ClientConn)
	}
	cc, ok := ts.h3s[qc]
	if !ok {
		cc = masque.NewClientConn((&http3.Transport{EnableDatagrams: true}).NewClientConn(qc.Conn))
		ts.h3s[qc] = cc
	}
	ts.mu.Unlock()
	req, err := masque.NewRequest(context.Background(), uritemplate.MustNew("https://"+ts.addr+UDPPathPrefix+udpTemplateVars), target)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header().Set("Authorization", "Bearer "+token)
	}
	c, rsp, err := cc.Dial(req)
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, rsp, err
}

// startEcho runs a UDP echo server on 127.0.0.2. reply, if set, computes
// the answer to each datagram.
func startEcho(t *testing.T, reply func([]byte) []byte) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(udpTargetAddr, 0)))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			out := b[:n]
			if reply != nil {
				out = reply(out)
			}
			pc.WriteToUDPAddrPort(out, from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func startForwarder(t *testing.T, qc *quicio.ClientConn, cfg UDPForwarderConfig) *UDPForwarder {
	t.Helper()
	cfg.Conn = qc.Conn
	if cfg.Token == "" {
		cfg.Token = testToken
	}
	cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	f, err := NewUDPForwarder(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("forwarder Run = %v, want nil after cancel", err)
		}
	})
	return f
}

// exchange sends p from c and waits for its echo.
func exchange(t *testing.T, c *net.UDPConn, p []byte) []byte {
	t.Helper()
	if _, err := c.Write(p); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 65536)
	n, err := c.Read(b)
	if err != nil {
		t.Fatalf("no echo for %d bytes: %v", len(p), err)
	}
	return b[:n]
}

func pattern(seq, size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(seq*31 + i*7)
	}
	return b
}

func dialLocal(t *testing.T, to netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestUDPForwarderEcho(t *testing.T) {
	checkLeaks(t)
	ts := startUDPServer(t, UDPConfig{})
	echo := startEcho(t, nil)
	qc := ts.dial(t)
	f := startForwarder(t, qc, UDPForwarderConfig{
		Authority: ts.addr,
		Forwards: []UDPForward{
			{Listen: "127.0.0.1:0", Target: echo.String()},
			{Listen: "127.0.0.1:0", Target: fmt.Sprintf("echo.target.test:%d", echo.Port())},
		},
	})
	const perPeer = 100
	var wg sync.WaitGroup
	for i, l := range f.ListenAddrs() {
		for peer := range 2 {
			c := dialLocal(t, l)
			wg.Go(func() {
				for seq := range perPeer {
					p := pattern(seq+peer, 1+(seq*37+i)%1000)
					if got := exchange(t, c, p); !bytes.Equal(got, p) {
						t.Errorf("forward %d peer %d seq %d: echo differs (%d bytes, want %d)", i, peer, seq, len(got), len(p))
						return
					}
				}
			})
		}
	}
	wg.Wait()
	// Counters are bumped just after a datagram is handed on: let the
	// last ones land.
	waitFor(t, "the counters to settle", 2*time.Second, func() bool {
		st := f.Stats()
		return st.RxDatagrams == 4*perPeer && st.TxDatagrams == 4*perPeer &&
			ts.srv.counters.udp.upDatagrams.Load() == 4*perPeer && ts.srv.counters.udp.downDatagrams.Load() == 4*perPeer
	})
	st := f.Stats()
	if st.Flows != 4 || st.FlowsTotal != 4 || st.TxDatagrams != 4*perPeer || st.RxDatagrams != 4*perPeer || len(st.Drops) != 0 {
		t.Errorf("forwarder stats = %+v, want 4 flows and %d datagrams each way, no drops", st, 4*perPeer)
	}
	c := &ts.srv.counters.udp
	if c.flows.Load() != 4 || c.upDatagrams.Load() != 4*perPeer || c.downDatagrams.Load() != 4*perPeer || c.upBytes.Load() != st.TxBytes {
		t.Errorf("server counters: flows %d, up %d (%d B), down %d; want 4, %d (%d B), %d",
			c.flows.Load(), c.upDatagrams.Load(), c.upBytes.Load(), c.downDatagrams.Load(), 4*perPeer, st.TxBytes, 4*perPeer)
	}
	if got := gatherValue(t, ts.srv, "masque_udp_flows", ""); got != 4 {
		t.Errorf("masque_udp_flows = %v, want 4", got)
	}
	if got := gatherValue(t, ts.srv, "masque_udp_datagrams_total", "down"); got != 4*perPeer {
		t.Errorf(`masque_udp_datagrams_total{direction="down"} = %v, want %d`, got, 4*perPeer)
	}
}

// gatherValue returns the value of the metric name whose one label has
// value label ("" for no label), -1 if there is none.
func gatherValue(t *testing.T, srv *Server, name, label string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(srv.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if (label == "" && len(m.GetLabel()) == 0) || (len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == label) {
				if g := m.GetGauge(); g != nil {
					return g.GetValue()
				}
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}

func TestUDPRefusals(t *testing.T) {
	checkLeaks(t)
	rules, err := policy.NewUDPRules(policy.UDPRulesConfig{
		Allow:     map[string][]string{"bob": {"only.target.test:*", "127.0.0.2:9"}},
		Anonymous: []string{"anon.target.test:*"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := startUDPServer(t, UDPConfig{Rules: rules, ResolveTimeout: 200 * time.Millisecond})
	echo := startEcho(t, nil)
	port := fmt.Sprint(echo.Port())
	tests := []struct {
		name, token, target string
		status              int
		proxyStatus         string // substring; "" for none expected
		refusal             udpRefusal
	}{
		{"no credentials", "", "127.0.0.2:" + port, 401, "", udpRefuseAuth},
		{"bad token", "nope", "127.0.0.2:" + port, 401, "", udpRefuseAuth},
		{"bad token is not anonymous", "nope", "anon.target.test:" + port, 401, "", udpRefuseAuth},
		{"server address", testToken, "127.0.0.1:" + port, 403, "error=destination_ip_prohibited;details=\"server_address\"", udpRefuseDestination},
		{"loopback", testToken, "127.0.0.3:" + port, 403, "error=destination_ip_prohibited;details=\"loopback\"", udpRefuseDestination},
		{"metadata", testToken, "169.254.169.254:80", 403, "details=\"metadata\"", udpRefuseDestination},
		{"link local v6", testToken, "[fe80::1]:53", 403, "details=\"link_local\"", udpRefuseDestination},
		{"multicast", testToken, "224.0.0.251:5353", 403, "details=\"multicast\"", udpRefuseDestination},
		{"broadcast", testToken, "255.255.255.255:67", 403, "details=\"multicast\"", udpRefuseDestination},
		{"other client", testToken, "100.64.0.7:53", 403, "details=\"other_client\"", udpRefuseDestination},
		{"name resolving to loopback", testToken, "loop.test:53", 403, "error=destination_ip_prohibited", udpRefuseDestination},
		{"nxdomain", testToken, "nx.test:53", 502, "error=dns_error;rcode=\"NXDOMAIN\"", udpRefuseDNSError},
		{"dns timeout", testToken, "slow.test:53", 504, "error=dns_timeout", udpRefuseDNSTimeout},
		{"port 0", testToken, "127.0.0.2:0", 400, "target_port", udpRefuseBadRequest},
		{"bad name", testToken, "bad_host!:53", 400, "", udpRefuseBadRequest},
		{"allow-list miss by name", testToken + "-bob", "other.target.test:" + port, 403, "error=http_request_denied", udpRefuseNotAllowed},
		{"allow-list miss by port", testToken + "-bob", "127.0.0.2:" + port, 403, "error=http_request_denied", udpRefuseNotAllowed},
	}
	qc := ts.dial(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &ts.srv.counters.udp
			before := c.refused[tt.refusal].Load()
			_, rsp, err := ts.masqueDial(t, qc, tt.token, tt.target)
			if err == nil || rsp == nil {
				t.Fatalf("dial %s = %v, %v; want a refusal", tt.target, rsp, err)
			}
			ps := rsp.Header.Get("Proxy-Status")
			if rsp.StatusCode != tt.status || !strings.Contains(ps, tt.proxyStatus) {
				t.Errorf("dial %s = %d %q, want %d with %q", tt.target, rsp.StatusCode, ps, tt.status, tt.proxyStatus)
			}
			if got := c.refused[tt.refusal].Load(); got != before+1 {
				t.Errorf("refused[%s] = %d, want %d", tt.refusal, got, before+1)
			}
		})
	}
	// What the allow-lists do allow.
	for _, ok := range []struct{ name, token, target string }{
		{"allowed name", testToken + "-bob", "only.target.test:" + port},
		{"anonymous", "", "anon.target.test:" + port},
		{"unrestricted identity", testToken, "any.target.test:" + port},
		{"mixed answer skips the denied address", testToken, "mixed.test:" + port},
	} {
		t.Run(ok.name, func(t *testing.T) {
			c, rsp, err := ts.masqueDial(t, qc, ok.token, ok.target)
			if err != nil {
				t.Fatalf("dial %s: %v (%v)", ok.target, err, rsp)
			}
			if ps := rsp.Header.Get("Proxy-Status"); !strings.Contains(ps, `next-hop="127.0.0.2:`+port+`"`) {
				t.Errorf("Proxy-Status = %q, want next-hop 127.0.0.2:%s", ps, port)
			}
			if _, err := c.WriteTo([]byte("ping"), nil); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			b := make([]byte, 100)
			n, _, err := c.ReadFrom(b)
			if err != nil || string(b[:n]) != "ping" {
				t.Errorf("echo through %s = %q, %v", ok.target, b[:n], err)
			}
			c.Close()
		})
	}
}

func TestUDPFlowLimits(t *testing.T) {
	checkLeaks(t)
	ts := startUDPServer(t, UDPConfig{MaxFlowsPerConn: 2, MaxFlowsPerIdentity: 3})
	echo := startEcho(t, nil)
	qc1, qc2 := ts.dial(t), ts.dial(t)
	for range 2 {
		if _, rsp, err := ts.masqueDial(t, qc1, testToken, echo.String()); err != nil {
			t.Fatalf("flow within limits refused: %v %v", err, rsp)
		}
	}
	_, rsp, err := ts.masqueDial(t, qc1, testToken, echo.String())
	if err == nil || rsp.StatusCode != http.StatusTooManyRequests || !strings.Contains(rsp.Header.Get("Proxy-Status"), "connection_limit_reached") {
		t.Fatalf("third flow on one connection = %v %v, want 429 connection_limit_reached", rsp, err)
	}
	if _, rsp, err := ts.masqueDial(t, qc2, testToken, echo.String()); err != nil {
		t.Fatalf("third flow of alice on a second connection refused: %v %v", err, rsp)
	}
	_, rsp, err = ts.masqueDial(t, qc2, testToken, echo.String())
	if err == nil || rsp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("fourth flow of alice = %v %v, want 429", rsp, err)
	}
	// Another identity has its own budget.
	if _, rsp, err := ts.masqueDial(t, qc2, testToken+"-bob", echo.String()); err != nil {
		t.Fatalf("bob's flow refused: %v %v", err, rsp)
	}
	c := &ts.srv.counters.udp
	if c.refused[udpRefuseConnLimit].Load() != 1 || c.refused[udpRefuseIdentityLimit].Load() != 1 {
		t.Errorf("refusals conn %d identity %d, want 1 and 1", c.refused[udpRefuseConnLimit].Load(), c.refused[udpRefuseIdentityLimit].Load())
	}
}

func TestUDPIdleTimeout(t *testing.T) {
	checkLeaks(t)
	ts := startUDPServer(t, UDPConfig{IdleTimeout: 300 * time.Millisecond})
	echo := startEcho(t, nil)
	qc := ts.dial(t)
	c, _, err := ts.masqueDial(t, qc, testToken, echo.String())
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 100)
	// Activity keeps the flow open past the timeout.
	for range 6 {
		if _, err := c.WriteTo([]byte("keep"), nil); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, _, err := c.ReadFrom(b); err != nil {
			t.Fatalf("active flow closed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err = c.ReadFrom(b)
	took := time.Since(start)
	if err == nil || errors.Is(err, context.DeadlineExceeded) || took > 2*time.Second {
		t.Fatalf("idle flow: ReadFrom = %v after %v, want the stream closed by the server within ~0.3 s", err, took)
	}
	waitFor(t, "the flow gauge to drop to 0", 2*time.Second, func() bool { return ts.srv.counters.udp.flows.Load() == 0 })
}

func TestUDPTooBig(t *testing.T) {
	checkLeaks(t)
	ts := startUDPServer(t, UDPConfig{})
	// The target answers "big" with 3000 bytes, anything else with itself.
	echo := startEcho(t, func(p []byte) []byte {
		if string(p) == "big" {
			return bytes.Repeat([]byte{'x'}, 3000)
		}
		return p
	})
	qc := ts.dial(t)
	f := startForwarder(t, qc, UDPForwarderConfig{Authority: ts.addr, Forwards: []UDPForward{{Listen: "127.0.0.1:0", Target: echo.String()}}})
	c := dialLocal(t, f.ListenAddrs()[0])
	if got := exchange(t, c, []byte("warm")); string(got) != "warm" {
		t.Fatalf("echo = %q", got)
	}
	for _, size := range []int{1500, 4000, 65000} {
		if _, err := c.Write(make([]byte, size)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "3 too_big drops at the forwarder", 2*time.Second, func() bool { return f.Stats().Drops["too_big"] == 3 })
	// The budget may still grow while path MTU discovery runs: learn it
	// until one more byte than it is dropped.
	max := 0
	for attempt := 0; ; attempt++ {
		drops := f.Stats().Drops["too_big"]
		c.Write(make([]byte, 1500))
		waitFor(t, "a too_big drop", 2*time.Second, func() bool { return f.Stats().Drops["too_big"] == drops+1 })
		max = f.Stats().MaxPayload
		c.Write(make([]byte, max+1))
		time.Sleep(100 * time.Millisecond)
		if f.Stats().Drops["too_big"] == drops+2 && f.Stats().MaxPayload == max {
			break
		}
		if attempt == 5 {
			t.Fatalf("a payload of MaxPayload+1 = %d bytes is not dropped", max+1)
		}
	}
	if max < 1100 || max > 1452 {
		t.Errorf("MaxPayload = %d, want a QUIC datagram budget (1100-1452)", max)
	}
	// The largest that fits goes through intact.
	p := pattern(1, max)
	if got := exchange(t, c, p); !bytes.Equal(got, p) {
		t.Errorf("echo of %d bytes differs", max)
	}

	// Target to client: dropped and counted at the server, nothing arrives.
	c.Write([]byte("big"))
	waitFor(t, "a too_big drop at the server", 2*time.Second, func() bool { return ts.srv.counters.udp.drops[udpDropTooBig].Load() == 1 })
	if got := exchange(t, c, []byte("after")); string(got) != "after" {
		t.Errorf("echo after the drops = %q, want after (no fragment of the big reply)", got)
	}
}

func TestUDPServerCloseEndsFlows(t *testing.T) {
	checkLeaks(t)
	ts := startUDPServer(t, UDPConfig{})
	echo := startEcho(t, nil)
	qc := ts.dial(t)
	var conns []*masque.Conn
	for range 3 {
		c, _, err := ts.masqueDial(t, qc, testToken, echo.String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	waitFor(t, "3 flows", 2*time.Second, func() bool { return ts.srv.counters.udp.flows.Load() == 3 })
	done := make(chan struct{})
	go func() { ts.srv.udp.close(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("closing the flows hangs")
	}
	if n := ts.srv.counters.udp.flows.Load(); n != 0 {
		t.Errorf("flows after close = %d, want 0", n)
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, _, err := c.ReadFrom(make([]byte, 10)); err == nil || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("flow %d: ReadFrom after the server closed = %v, want the stream's end", i, err)
		}
	}
	_, rsp, err := ts.masqueDial(t, qc, testToken, echo.String())
	if err == nil || rsp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("new flow while closing = %v %v, want 503", rsp, err)
	}
}

func TestUDPForwarderEvictsLeastActive(t *testing.T) {
	checkLeaks(t)
	ts := startUDPServer(t, UDPConfig{})
	echo := startEcho(t, nil)
	qc := ts.dial(t)
	f := startForwarder(t, qc, UDPForwarderConfig{Authority: ts.addr, MaxFlows: 2,
		Forwards: []UDPForward{{Listen: "127.0.0.1:0", Target: echo.String()}}})
	l := f.ListenAddrs()[0]
	a, b, c := dialLocal(t, l), dialLocal(t, l), dialLocal(t, l)
	for i, conn := range []*net.UDPConn{a, b, c, a} {
		msg := []byte(fmt.Sprint("m", i))
		if got := exchange(t, conn, msg); !bytes.Equal(got, msg) {
			t.Fatalf("exchange %d = %q", i, got)
		}
	}
	st := f.Stats()
	if st.Flows != 2 || st.FlowsTotal != 4 {
		t.Errorf("flows %d, total %d; want 2 open of 4 opened (a, b, c evicting a, a evicting b)", st.Flows, st.FlowsTotal)
	}
	waitFor(t, "the server to close evicted flows", 2*time.Second, func() bool { return ts.srv.counters.udp.flows.Load() == 2 })
}

func TestUDPForwarderIdle(t *testing.T) {
	checkLeaks(t)
	ts := startUDPServer(t, UDPConfig{})
	echo := startEcho(t, nil)
	qc := ts.dial(t)
	f := startForwarder(t, qc, UDPForwarderConfig{Authority: ts.addr, IdleTimeout: 200 * time.Millisecond,
		Forwards: []UDPForward{{Listen: "127.0.0.1:0", Target: echo.String()}}})
	c := dialLocal(t, f.ListenAddrs()[0])
	exchange(t, c, []byte("one"))
	waitFor(t, "the idle flow to close at both ends", 3*time.Second, func() bool {
		return f.Stats().Flows == 0 && ts.srv.counters.udp.flows.Load() == 0
	})
	if got := exchange(t, c, []byte("two")); string(got) != "two" {
		t.Errorf("echo on a new flow = %q", got)
	}
	if st := f.Stats(); st.FlowsTotal != 2 {
		t.Errorf("flows opened = %d, want 2", st.FlowsTotal)
	}
}

// TestUDPForwarderRedials: a forwarder with Redial outlives its
// connection. The server closes the first connection for carrying no
// request within RequestTimeout; the next local datagram opens a new
// connection and its flow, and Run keeps going.
func TestUDPForwarderRedials(t *testing.T) {
	checkLeaks(t)
	const timeout = 200 * time.Millisecond
	ts := startUDPServer(t, UDPConfig{}, func(c *ServerConfig) { c.RequestTimeout = timeout })
	echo := startEcho(t, nil)
	first := ts.dial(t)
	var dials atomic.Int32
	f := startForwarder(t, first, UDPForwarderConfig{Authority: ts.addr,
		Redial: func(ctx context.Context) (*quic.Conn, error) {
			dials.Add(1)
			return ts.dial(t).Conn, nil
		},
		Forwards: []UDPForward{{Listen: "127.0.0.1:0", Target: echo.String()}}})
	select {
	case <-first.Conn.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the server did not close a connection without a request")
	}
	c := dialLocal(t, f.ListenAddrs()[0])
	for i := range 3 {
		msg := []byte(fmt.Sprint("after the loss ", i))
		if got := exchange(t, c, msg); !bytes.Equal(got, msg) {
			t.Fatalf("echo %d = %q, want %q", i, got, msg)
		}
	}
	st := f.Stats()
	if n := dials.Load(); n != 1 || st.Redials != 1 || st.FlowsTotal != 1 {
		t.Errorf("redials %d (stats %d), flows opened %d; want 1, 1, 1", n, st.Redials, st.FlowsTotal)
	}
	if got := ts.srv.counters.idleConns.Load(); got != 1 {
		t.Errorf("connections closed for want of a request = %d, want 1", got)
	}
}

func TestUDPForwarderRefused(t *testing.T) {
	checkLeaks(t)
	ts := startUDPServer(t, UDPConfig{})
	qc := ts.dial(t)
	f := startForwarder(t, qc, UDPForwarderConfig{Authority: ts.addr,
		Forwards: []UDPForward{{Listen: "127.0.0.1:0", Target: "169.254.169.254:80"}}})
	c := dialLocal(t, f.ListenAddrs()[0])
	for range 3 {
		c.Write([]byte("x"))
	}
	waitFor(t, "the refusal", 3*time.Second, func() bool {
		st := f.Stats()
		return st.FlowsRefused == 1 && st.Drops["flow_refused"] == 3
	})
	if st := f.Stats(); !strings.Contains(st.LastRefusal, "403") || !strings.Contains(st.LastRefusal, "destination_ip_prohibited") {
		t.Errorf("LastRefusal = %q, want 403 destination_ip_prohibited", st.LastRefusal)
	}
}

func TestUDPForwardUpAllocs(t *testing.T) {
	sink, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	uc, err := net.DialUDP("udp", nil, sink.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	p := &udpProxy{counters: new(udpCounters)}
	f := newUDPFlow(p, uc, 1)
	d := append([]byte{contextIDZero}, make([]byte, 1200)...)
	if n := testing.AllocsPerRun(200, func() { f.forwardUp(d) }); n != 0 {
		t.Errorf("forwardUp allocates %v times per datagram, want 0", n)
	}
	if p.counters.upDatagrams.Load() == 0 {
		t.Error("nothing forwarded")
	}
}
