package quicio

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
)

const testALPN = "quicio-test"

// testCert returns a self-signed certificate for 127.0.0.1 and localhost,
// and a pool that trusts it.
func testCert(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "quicio test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

var (
	certOnce   sync.Once
	sharedCert tls.Certificate
	sharedPool *x509.CertPool
)

func serverTLS(t testing.TB) *tls.Config {
	certOnce.Do(func() { sharedCert, sharedPool = testCert(t) })
	return &tls.Config{Certificates: []tls.Certificate{sharedCert}, NextProtos: []string{testALPN}}
}

func clientTLS(t testing.TB) *tls.Config {
	certOnce.Do(func() { sharedCert, sharedPool = testCert(t) })
	return &tls.Config{RootCAs: sharedPool, NextProtos: []string{testALPN}}
}

// fakeApp is an Application that echoes every stream and records the
// connections it serves.
type fakeApp struct {
	served chan *quic.Conn // every connection given to ServeConn
	// graceful makes Shutdown end every ServeConn at once; otherwise
	// Shutdown waits for its ctx, like an HTTP/3 server whose clients do
	// not go away.
	graceful bool

	mu        sync.Mutex
	drain     chan struct{}
	shutdowns int
}

func newFakeApp(graceful bool) *fakeApp {
	return &fakeApp{served: make(chan *quic.Conn, 16), graceful: graceful, drain: make(chan struct{})}
}

func (a *fakeApp) ServeConn(ctx context.Context, c *quic.Conn) error {
	a.served <- c
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.mu.Lock()
	drain := a.drain
	a.mu.Unlock()
	go func() {
		select {
		case <-drain:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		str, err := c.AcceptStream(ctx)
		if err != nil {
			return nil
		}
		_, _ = io.Copy(str, str)
		str.Close()
	}
}

// shutdownCalls returns how often Shutdown was called.
func (a *fakeApp) shutdownCalls() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.shutdowns
}

func (a *fakeApp) Shutdown(ctx context.Context) error {
	a.mu.Lock()
	a.shutdowns++
	if a.graceful {
		select {
		case <-a.drain:
		default:
			close(a.drain)
		}
	}
	a.mu.Unlock()
	if a.graceful {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

// testServer is a running Server and the result of its Serve.
type testServer struct {
	*Server
	serveErr chan error
}

// startServer starts a Server on 127.0.0.1 and stops it at the end of the
// test.
func startServer(t *testing.T, cfg Config, app Application) *testServer {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.TLSConfig == nil {
		cfg.TLSConfig = serverTLS(t)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s, err := NewServer(cfg, app)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	ts := &testServer{Server: s, serveErr: make(chan error, 1)}
	go func() { ts.serveErr <- s.Serve() }()
	t.Cleanup(func() {
		s.Close()
		if err := ts.waitServe(t); err != nil {
			t.Errorf("Serve = %v, want nil", err)
		}
	})
	return ts
}

// waitServe returns what Serve returned; Serve may be waited for more than
// once.
func (ts *testServer) waitServe(t *testing.T) error {
	t.Helper()
	select {
	case err := <-ts.serveErr:
		ts.serveErr <- err
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
		return nil
	}
}

// dial connects to ts and closes the connection at the end of the test.
func dial(t *testing.T, addr net.Addr) (*ClientConn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, DialConfig{Addr: addr.String(), TLSConfig: clientTLS(t)})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		c.Close()
	})
	return c, nil
}

func mustDial(t *testing.T, addr net.Addr) *ClientConn {
	t.Helper()
	c, err := dial(t, addr)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	return c
}

// echo sends msg on a new stream of c and checks that it comes back.
func echo(t *testing.T, c *quic.Conn, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	str, err := c.OpenStreamSync(ctx)
	if err != nil {
		t.Fatalf("OpenStreamSync: %v", err)
	}
	str.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(str, msg); err != nil {
		t.Fatalf("stream write: %v", err)
	}
	str.Close()
	got, err := io.ReadAll(str)
	if err != nil {
		t.Fatalf("stream read: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
}

func recvConn(t *testing.T, ch <-chan *quic.Conn) *quic.Conn {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no connection served")
		return nil
	}
}

// closedBy waits for c to be closed and returns why.
func closedBy(t *testing.T, c *quic.Conn, within time.Duration) error {
	t.Helper()
	select {
	case <-c.Context().Done():
		return context.Cause(c.Context())
	case <-time.After(within):
		t.Fatalf("connection still open after %v", within)
		return nil
	}
}

// wantAppClose checks that err is the peer closing with code.
func wantAppClose(t *testing.T, err error, code quic.ApplicationErrorCode) *quic.ApplicationError {
	t.Helper()
	ae, ok := errors.AsType[*quic.ApplicationError](err)
	if !ok || !ae.Remote || ae.ErrorCode != code {
		t.Fatalf("connection closed by %v, want the server's application close %#x", err, code)
	}
	return ae
}

// eventually polls cond for up to 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConfigValidate(t *testing.T) {
	good := func() Config {
		return Config{Addr: "127.0.0.1:443", TLSConfig: serverTLS(t)}
	}
	tests := []struct {
		name    string
		mod     func(c *Config)
		wantErr []string // every one must appear; nil means valid
	}{
		{"valid", func(*Config) {}, nil},
		{"host name", func(c *Config) { c.Addr = "localhost:443" }, nil},
		{"IPv6", func(c *Config) { c.Addr = "[::]:443" }, nil},
		{"GetCertificate only", func(c *Config) {
			c.TLSConfig = &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, nil }}
		}, nil},
		{"empty addr", func(c *Config) { c.Addr = "" }, []string{"addr: empty"}},
		{"addr without port", func(c *Config) { c.Addr = "127.0.0.1" }, []string{"addr:"}},
		{"no TLS", func(c *Config) { c.TLSConfig = nil }, []string{"tls: no configuration"}},
		{"no certificate", func(c *Config) { c.TLSConfig = &tls.Config{} }, []string{"tls: no certificate"}},
		{"negative max conns", func(c *Config) { c.MaxConns = -1 }, []string{"max_conns: -1"}},
		{"negative max conns per source", func(c *Config) { c.MaxConnsPerSource = -2 }, []string{"max_conns_per_source: -2"}},
		{"retry threshold below -1", func(c *Config) { c.RetryThreshold = -2 }, []string{"retry_threshold: -2"}},
		{"handshake rate below -1", func(c *Config) { c.MaxHandshakeRate = -5 }, []string{"max_handshake_rate: -5"}},
		{"everything at once", func(c *Config) {
			*c = Config{Addr: "nowhere", MaxConns: -1, MaxConnsPerSource: -1}
		}, []string{"addr:", "tls: no configuration", "max_conns: -1", "max_conns_per_source: -1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good()
			tt.mod(&c)
			err := c.Validate()
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want errors %q", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to mention %q", err, w)
				}
			}
			if n := len(strings.Split(err.Error(), "\n")); n != len(tt.wantErr) {
				t.Errorf("Validate() reported %d problems, want %d: %q", n, len(tt.wantErr), err)
			}
		})
	}
}

func TestNewServerErrors(t *testing.T) {
	if _, err := NewServer(Config{}, newFakeApp(true)); err == nil {
		t.Error("NewServer(zero Config) = nil error")
	}
	// The address is taken.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if s, err := NewServer(Config{Addr: pc.LocalAddr().String(), TLSConfig: serverTLS(t)}, newFakeApp(true)); err == nil {
		s.Close()
		t.Error("NewServer on a bound address = nil error")
	} else if !strings.Contains(err.Error(), "listen on "+pc.LocalAddr().String()) {
		t.Errorf("NewServer on a bound address = %q, want it to say which address", err)
	}
	// A bad key in the state dir is refused before the socket opens.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, resetKeyFile), []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := NewServer(Config{Addr: "127.0.0.1:0", TLSConfig: serverTLS(t), StateDir: dir}, newFakeApp(true)); err == nil {
		s.Close()
		t.Error("NewServer with a bad key file = nil error")
	}
}

func TestServerServesConnections(t *testing.T) {
	app := newFakeApp(true)
	var (
		mu     sync.Mutex
		closed = map[*quic.Conn]quic.ConnectionStats{}
		estab  = map[*quic.Conn]bool{}
	)
	ts := startServer(t, Config{Hooks: Hooks{
		OnEstablished: func(c *quic.Conn) error {
			mu.Lock()
			defer mu.Unlock()
			if !c.ConnectionState().TLS.HandshakeComplete {
				t.Error("OnEstablished before the handshake completed")
			}
			estab[c] = true
			return nil
		},
		OnClose: func(c *quic.Conn, st quic.ConnectionStats) {
			mu.Lock()
			defer mu.Unlock()
			if c.Context().Err() == nil {
				t.Error("OnClose called on an open connection")
			}
			closed[c] = st
		},
	}}, app)

	const n = 3
	var clients []*ClientConn
	for range n {
		clients = append(clients, mustDial(t, ts.Addr()))
	}
	served := map[*quic.Conn]bool{}
	for range n {
		served[recvConn(t, app.served)] = true
	}
	if len(served) != n {
		t.Fatalf("ServeConn saw %d distinct connections, want %d", len(served), n)
	}
	// Every ServeConn blocks at once: one worker per connection.
	if st := ts.Stats(); st.Active != n || st.Accepted != n || st.Handshaking != 0 {
		t.Errorf("Stats() = %+v, want %d active and accepted, 0 handshaking", st, n)
	}
	for i, c := range clients {
		echo(t, c.Conn, strings.Repeat("x", 100*(i+1)))
	}
	mu.Lock()
	for c := range served {
		if !estab[c] {
			t.Error("OnEstablished not called for a served connection")
		}
	}
	mu.Unlock()

	for _, c := range clients {
		c.Close()
	}
	eventually(t, "OnClose for every connection", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(closed) == n
	})
	mu.Lock()
	for c, st := range closed {
		if !served[c] {
			t.Error("OnClose for a connection that was not served")
		}
		if st.PacketsReceived == 0 || st.BytesReceived == 0 || st.PacketsSent == 0 {
			t.Errorf("OnClose stats = %+v, want traffic counted", st)
		}
	}
	mu.Unlock()
	eventually(t, "no active connections", func() bool { return ts.Stats().Active == 0 })

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown = %v", err)
	}
	if err := ts.waitServe(t); err != nil {
		t.Errorf("Serve after Shutdown = %v, want nil", err)
	}
}

func TestServerOnEstablishedRejects(t *testing.T) {
	app := newFakeApp(true)
	onClose := make(chan quic.ConnectionStats, 1)
	ts := startServer(t, Config{Hooks: Hooks{
		OnEstablished: func(*quic.Conn) error { return errors.New("not today") },
		OnClose:       func(_ *quic.Conn, st quic.ConnectionStats) { onClose <- st },
	}}, app)
	c, err := dial(t, ts.Addr())
	if err == nil {
		err = closedBy(t, c.Conn, 5*time.Second)
	}
	if ae := wantAppClose(t, err, codeServerBusy); ae.ErrorMessage != "not today" {
		t.Errorf("close reason = %q, want the hook's error", ae.ErrorMessage)
	}
	select {
	case <-onClose:
	case <-time.After(5 * time.Second):
		t.Fatal("OnClose not called for a rejected connection")
	}
	select {
	case <-app.served:
		t.Error("ServeConn called for a rejected connection")
	default:
	}
	if st := ts.Stats(); st.RejectedByHooks != 1 {
		t.Errorf("Stats() = %+v, want 1 rejected by hooks", st)
	}
	eventually(t, "the worker to end", func() bool { return ts.Stats().Active == 0 })
}

func TestServerMaxConns(t *testing.T) {
	app := newFakeApp(true)
	ts := startServer(t, Config{MaxConns: 1}, app)
	first := mustDial(t, ts.Addr())
	recvConn(t, app.served)

	second, err := dial(t, ts.Addr())
	if err == nil {
		err = closedBy(t, second.Conn, 5*time.Second)
	}
	wantAppClose(t, err, codeServerBusy)
	if st := ts.Stats(); st.RejectedBusy != 1 || st.Active != 1 {
		t.Errorf("Stats() = %+v, want 1 rejected busy, 1 active", st)
	}
	echo(t, first.Conn, "still served")

	// The slot is released when the first connection ends.
	first.Close()
	eventually(t, "the slot to be released", func() bool { return ts.Stats().Active == 0 })
	third := mustDial(t, ts.Addr())
	echo(t, third.Conn, "third")
}

func TestServerMaxConnsPerSource(t *testing.T) {
	app := newFakeApp(true)
	ts := startServer(t, Config{MaxConnsPerSource: 1}, app)
	first := mustDial(t, ts.Addr())
	recvConn(t, app.served)

	_, err := dial(t, ts.Addr())
	te, ok := errors.AsType[*quic.TransportError](err)
	if !ok || te.ErrorCode != quic.ConnectionRefused || !te.Remote {
		t.Fatalf("second Dial from the same address = %v, want CONNECTION_REFUSED from the server", err)
	}
	// quic-go asks ConnContext once per Initial packet, and a ClientHello
	// with a post-quantum key share spans two, so the count may be higher.
	if st := ts.Stats(); st.RejectedSource == 0 {
		t.Errorf("Stats() = %+v, want rejections by source counted", st)
	}
	echo(t, first.Conn, "still served")

	first.Close()
	eventually(t, "the source's slot to be released", func() bool {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		return len(ts.sources) == 0
	})
	third := mustDial(t, ts.Addr())
	echo(t, third.Conn, "third")
}

func TestServerShutdownGraceful(t *testing.T) {
	app := newFakeApp(true)
	ts := startServer(t, Config{}, app)
	c := mustDial(t, ts.Addr())
	recvConn(t, app.served)

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Shutdown of a draining application took %v", d)
	}
	wantAppClose(t, closedBy(t, c.Conn, 5*time.Second), codeNoError)
	if err := ts.waitServe(t); err != nil {
		t.Errorf("Serve after Shutdown = %v, want nil", err)
	}
	if err := ts.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown = %v, want nil", err)
	}
	if n := app.shutdownCalls(); n != 1 {
		t.Errorf("Application.Shutdown called %d times, want 1", n)
	}
}

func TestServerShutdownDeadline(t *testing.T) {
	app := newFakeApp(false) // never drains by itself
	closes := make(chan struct{}, 4)
	ts := startServer(t, Config{Hooks: Hooks{
		OnClose: func(*quic.Conn, quic.ConnectionStats) { closes <- struct{}{} },
	}}, app)
	c1 := mustDial(t, ts.Addr())
	c2 := mustDial(t, ts.Addr())
	recvConn(t, app.served)
	recvConn(t, app.served)

	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := ts.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown past its deadline = %v, want nil (a hard close is the documented end)", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
		t.Errorf("Shutdown took %v, want about its 300ms deadline", d)
	}
	for _, c := range []*ClientConn{c1, c2} {
		wantAppClose(t, closedBy(t, c.Conn, 5*time.Second), codeNoError)
	}
	for range 2 {
		select {
		case <-closes:
		case <-time.After(5 * time.Second):
			t.Fatal("OnClose not called after the hard close")
		}
	}
	if st := ts.Stats(); st.Active != 0 {
		t.Errorf("Stats().Active = %d after Shutdown, want 0", st.Active)
	}
	if err := ts.waitServe(t); err != nil {
		t.Errorf("Serve after Shutdown = %v, want nil", err)
	}
}

func TestServerClose(t *testing.T) {
	app := newFakeApp(false)
	ts := startServer(t, Config{}, app)
	c := mustDial(t, ts.Addr())
	recvConn(t, app.served)
	if err := ts.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	wantAppClose(t, closedBy(t, c.Conn, 5*time.Second), codeNoError)
	if err := ts.waitServe(t); err != nil {
		t.Errorf("Serve after Close = %v, want nil", err)
	}
	if app.shutdownCalls() != 0 {
		t.Error("Close called Application.Shutdown")
	}
	// The socket is closed too: the port can be bound again at once.
	pc, err := net.ListenPacket("udp", ts.Addr().String())
	if err != nil {
		t.Fatalf("bind %s after Close: %v", ts.Addr(), err)
	}
	pc.Close()
}

// TestServerStatelessReset restarts a server with the same StateDir and
// checks that a client of the old server learns at once, through a
// stateless reset (RFC 9000 §10.3), that its connection is gone, instead
// of waiting for its idle timeout.
func TestServerStatelessReset(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts servers")
	}
	stateDir := filepath.Join(t.TempDir(), "state")
	for _, name := range []string{resetKeyFile, tokenKeyFile} {
		if _, err := os.Stat(filepath.Join(stateDir, name)); err == nil {
			t.Fatal("key exists before the server started")
		}
	}

	// crash stops s without telling its clients: the socket goes first, so
	// no CONNECTION_CLOSE leaves.
	crash := func(s *testServer) {
		s.conn.Close()
		s.Close()
		s.waitServe(t)
	}
	run := func(t *testing.T, restartDir string, wantReset bool) {
		app := newFakeApp(true)
		old := startServer(t, Config{StateDir: stateDir}, app)
		addr := old.Addr()
		c := mustDial(t, addr)
		echo(t, c.Conn, "before the crash")
		crash(old)

		startServer(t, Config{Addr: addr.String(), StateDir: restartDir}, newFakeApp(true))
		str, err := c.OpenStream()
		if err != nil {
			t.Fatalf("OpenStream: %v", err)
		}
		start := time.Now()
		if _, err := str.Write([]byte("anyone there?")); err != nil {
			t.Fatalf("stream write: %v", err)
		}
		if !wantReset {
			time.Sleep(time.Second)
			if err := c.Context().Err(); err != nil {
				t.Fatalf("a server with another reset key ended the connection: %v", context.Cause(c.Context()))
			}
			return
		}
		err = closedBy(t, c.Conn, 2*time.Second)
		if _, ok := errors.AsType[*quic.StatelessResetError](err); !ok {
			t.Fatalf("connection ended by %v, want a stateless reset", err)
		}
		t.Logf("reset after %v", time.Since(start).Round(time.Millisecond))
	}
	t.Run("same state dir", func(t *testing.T) { run(t, stateDir, true) })
	for _, name := range []string{resetKeyFile, tokenKeyFile} {
		fi, err := os.Stat(filepath.Join(stateDir, name))
		if err != nil {
			t.Fatalf("key file: %v", err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode = %#o, want 0600", name, fi.Mode().Perm())
		}
	}
	// Control: a server with a fresh key cannot reset the connection, so the
	// fast failure above is the persisted key's doing.
	t.Run("other state dir", func(t *testing.T) { run(t, t.TempDir(), false) })
}

// TestServerHandshakeRate: over MaxHandshakeRate the server first asks
// for Retry (once half the burst is spent), then refuses address-validated
// peers with CONNECTION_REFUSED; connections already up are unaffected.
// The counters reach the Prometheus collector.
func TestServerHandshakeRate(t *testing.T) {
	app := newFakeApp(true)
	ts := startServer(t, Config{MaxHandshakeRate: 1}, app) // burst 16
	burst := handshakeBurst(1)
	start := time.Now()
	var ok, refused int
	var first *ClientConn
	for range burst + 8 {
		c, err := dial(t, ts.Addr())
		if err != nil {
			te, isTE := errors.AsType[*quic.TransportError](err)
			if !isTE || te.ErrorCode != quic.ConnectionRefused || !te.Remote {
				t.Fatalf("Dial over the handshake rate = %v, want CONNECTION_REFUSED from the server", err)
			}
			refused++
			continue
		}
		recvConn(t, app.served)
		if first == nil {
			first = c
		}
		ok++
	}
	took := time.Since(start)
	// The bucket refills at 1 a second while the loop runs.
	if maxOK := burst + 1 + int(took/time.Second); ok < burst || ok > maxOK || refused == 0 {
		t.Errorf("%d dials in %v: %d connected, %d refused; want %d..%d connected and the rest refused", burst+8, took, ok, refused, burst, maxOK)
	}
	st := ts.Stats()
	if st.RejectedRate == 0 || st.RetriesAsked < uint64(burst/2) {
		t.Errorf("Stats() = %+v, want handshake-rate refusals and at least %d Retries (every dial after half the burst)", st, burst/2)
	}
	echo(t, first.Conn, "still served")
	t.Logf("%d connected, %d refused in %v; %d Retries asked", ok, refused, took.Round(time.Millisecond), st.RetriesAsked)

	reg := prometheus.NewRegistry()
	reg.MustRegister(ts.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "/" + l.GetValue()
			}
			if c := m.GetCounter(); c != nil {
				got[key] = c.GetValue()
			} else {
				got[key] = m.GetGauge().GetValue()
			}
		}
	}
	// A refused client may still retransmit an Initial after it gave up, and
	// the server counts each one, so the metrics are compared with Stats()
	// taken on either side of the scrape.
	after := ts.Stats()
	within := func(v float64, lo, hi uint64) bool { return v >= float64(lo) && v <= float64(hi) }
	if !within(got["masque_quic_connections_refused_total/handshake_rate"], st.RejectedRate, after.RejectedRate) ||
		!within(got["masque_quic_retries_total"], st.RetriesAsked, after.RetriesAsked) ||
		got["masque_quic_connections_accepted_total"] != float64(ok) {
		t.Errorf("metrics %v do not match Stats() %+v..%+v with %d accepted", got, st, after, ok)
	}
}
