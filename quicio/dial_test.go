package quicio

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

func TestDial(t *testing.T) {
	app := newFakeApp(true)
	ts := startServer(t, Config{}, app)
	c := mustDial(t, ts.Addr())
	st := c.ConnectionState()
	if !st.SupportsDatagrams.Local || !st.SupportsDatagrams.Remote {
		t.Errorf("datagrams not negotiated: %+v", st.SupportsDatagrams)
	}
	if st.TLS.NegotiatedProtocol != testALPN {
		t.Errorf("ALPN = %q, want %q", st.TLS.NegotiatedProtocol, testALPN)
	}
	if c.Transport() == nil || c.Transport().Conn.LocalAddr().String() != c.LocalAddr().String() {
		t.Error("the connection does not run on the ClientConn's own Transport")
	}
	echo(t, c.Conn, "hello")
	recvConn(t, app.served)

	if err := c.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	if c.Context().Err() == nil {
		t.Error("connection open after Close")
	}
}

func TestDialServerName(t *testing.T) {
	ts := startServer(t, Config{}, newFakeApp(true))
	// The certificate names 127.0.0.1 and localhost.
	for _, tt := range []struct {
		name, addr, serverName string
		ok                     bool
	}{
		{"IP literal", ts.Addr().String(), "", true},
		{"server name override", ts.Addr().String(), "localhost", true},
		{"wrong server name", ts.Addr().String(), "other.example", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			c, err := Dial(ctx, DialConfig{Addr: tt.addr, ServerName: tt.serverName, TLSConfig: clientTLS(t)})
			if err == nil {
				c.Close()
			}
			if (err == nil) != tt.ok {
				t.Fatalf("Dial(%s, server name %q) = %v, want ok %v", tt.addr, tt.serverName, err, tt.ok)
			}
		})
	}
}

func TestDialErrors(t *testing.T) {
	ctx := t.Context()
	if _, err := Dial(ctx, DialConfig{Addr: "127.0.0.1:443"}); err == nil {
		t.Error("Dial without TLS configuration = nil error")
	}
	if _, err := Dial(ctx, DialConfig{Addr: "127.0.0.1", TLSConfig: clientTLS(t)}); err == nil {
		t.Error("Dial without a port = nil error")
	}
	if _, err := Dial(ctx, DialConfig{Addr: "127.0.0.1:notaport", TLSConfig: clientTLS(t)}); err == nil {
		t.Error("Dial with a bad port = nil error")
	}
}

func TestDialTimeout(t *testing.T) {
	// A socket that never answers, so the handshake can only time out.
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	c, err := Dial(ctx, DialConfig{Addr: silent.LocalAddr().String(), TLSConfig: clientTLS(t)})
	if err == nil {
		c.Close()
		t.Fatal("Dial to a silent socket = nil error")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Dial returned after %v, want about its 300ms deadline", d)
	}
	if !strings.Contains(err.Error(), "timeout") || !strings.Contains(err.Error(), silent.LocalAddr().String()) {
		t.Errorf("Dial = %q, want a timeout naming the address", err)
	}
}

func TestQUICConfigDefaults(t *testing.T) {
	c := quicConfig(nil, true)
	if !c.EnableDatagrams || c.MaxIdleTimeout != DefaultIdleTimeout || c.KeepAlivePeriod != DefaultKeepAlive {
		t.Errorf("quicConfig(nil, true) = datagrams %v, idle %v, keep-alive %v", c.EnableDatagrams, c.MaxIdleTimeout, c.KeepAlivePeriod)
	}
	s := quicConfig(nil, false)
	if !s.EnableDatagrams || s.MaxIdleTimeout != DefaultIdleTimeout || s.HandshakeIdleTimeout != DefaultHandshakeTimeout {
		t.Errorf("quicConfig(nil, false) = datagrams %v, idle %v, handshake %v", s.EnableDatagrams, s.MaxIdleTimeout, s.HandshakeIdleTimeout)
	}
	// A caller's config is cloned, not modified, and its values are kept.
	mine := &quic.Config{MaxIdleTimeout: time.Minute, KeepAlivePeriod: time.Second, HandshakeIdleTimeout: 2 * time.Second}
	c = quicConfig(mine, true)
	s = quicConfig(mine, false)
	if mine.EnableDatagrams {
		t.Error("the caller's quic.Config was modified")
	}
	if c == mine || s == mine {
		t.Error("the caller's quic.Config was not cloned")
	}
	if c.MaxIdleTimeout != time.Minute || c.KeepAlivePeriod != time.Second || !c.EnableDatagrams {
		t.Errorf("quicConfig(mine, true) = idle %v, keep-alive %v, datagrams %v", c.MaxIdleTimeout, c.KeepAlivePeriod, c.EnableDatagrams)
	}
	if s.MaxIdleTimeout != time.Minute || s.HandshakeIdleTimeout != 2*time.Second || !s.EnableDatagrams {
		t.Errorf("quicConfig(mine, false) = idle %v, handshake %v, datagrams %v", s.MaxIdleTimeout, s.HandshakeIdleTimeout, s.EnableDatagrams)
	}
}
