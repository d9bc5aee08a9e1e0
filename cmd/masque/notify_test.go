package main

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/masque-vpn/masque/tunnel"
)

// TestNotifier: each notification reaches a real notify socket as one
// datagram of VAR=VALUE lines, in the order sent; a socket nobody
// listens on is logged once.
func TestNotifier(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	var logs bytes.Buffer
	n := &notifier{logger: slog.New(slog.NewTextHandler(&logs, nil)), tun: "masque0"}
	up := upStatus("vpn.example.com:443", []netip.Prefix{netip.MustParsePrefix("100.64.0.2/32"), netip.MustParsePrefix("fd6d:6173:7175:6500::2/128")}, "masque0")
	srv := tunnel.AgentServer{Addr: "vpn.example.com:443"}
	n.status("connecting to vpn.example.com:443")
	n.ready(up)
	n.onEvent(tunnel.AgentEvent{Kind: tunnel.AgentLost, Server: srv})
	n.onEvent(tunnel.AgentEvent{Kind: tunnel.AgentFailing, Server: srv, Attempt: 2, Err: errors.New("timeout\nafter 10s")})
	n.status(up)
	n.stopping()
	want := []string{
		"STATUS=connecting to vpn.example.com:443",
		"READY=1\nSTATUS=up: server=vpn.example.com:443 addresses=100.64.0.2/32,fd6d:6173:7175:6500::2/128 tun=masque0",
		"STATUS=reconnecting: the tunnel to vpn.example.com:443 was lost",
		"STATUS=reconnecting: attempt 2 to vpn.example.com:443 failed: timeout; after 10s",
		"STATUS=up: server=vpn.example.com:443 addresses=100.64.0.2/32,fd6d:6173:7175:6500::2/128 tun=masque0",
		"STOPPING=1\nSTATUS=going down: restoring the host",
	}
	b := make([]byte, 4096)
	for i, w := range want {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		k, err := c.Read(b)
		if err != nil {
			t.Fatalf("notification %d: %v", i, err)
		}
		if got := string(b[:k]); got != w {
			t.Errorf("notification %d = %q, want %q", i, got, w)
		}
	}
	if logs.Len() != 0 {
		t.Errorf("notifier logged %q, want nothing", logs.String())
	}

	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody"))
	n.ready(up)
	n.stopping()
	if got := logs.String(); strings.Count(got, "\n") != 1 || !strings.Contains(got, `level=WARN msg="cannot notify the service manager"`) {
		t.Errorf("after two failed sends the log is %q, want one WARN line", got)
	}
}
