package main

import (
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/masque-vpn/masque/tun"
	"github.com/masque-vpn/masque/tunnel"
)

func TestCopyAside(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	for _, corrupt := range []string{`{"version":1,"pi`, "\x00\x00\x00\x00"} {
		if err := os.WriteFile(path, []byte(corrupt), 0o644); err != nil {
			t.Fatal(err)
		}
		aside, err := copyAside(path)
		if err != nil {
			t.Fatalf("copyAside(%q) = %v", corrupt, err)
		}
		if want := path + ".corrupt"; aside != want {
			t.Errorf("copyAside() = %q, want %q", aside, want)
		}
		b, err := os.ReadFile(aside)
		if err != nil || string(b) != corrupt {
			t.Errorf("copy holds %q, %v, want %q", b, err, corrupt)
		}
		if fi, err := os.Stat(aside); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("copy mode = %v, %v, want 0600", fi.Mode().Perm(), err)
		}
		// The original stays: state.json must exist until the fresh state
		// replaces it.
		if b, err := os.ReadFile(path); err != nil || string(b) != corrupt {
			t.Errorf("state file after copyAside = %q, %v, want it unchanged", b, err)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("state directory holds %v, want state.json and state.json.corrupt", entries)
	}
}

func TestStillBlocked(t *testing.T) {
	cause := errors.New("connect to 198.18.1.99:4433: timeout after 2s")
	tests := []struct {
		stateDir, want string
	}{
		{defaultStateDir, "masque down unblocks it"},
		{"/tmp/mq", "masque down --state-dir /tmp/mq unblocks it"},
	}
	for _, tt := range tests {
		err := stillBlocked(tt.stateDir, tun.DefaultKillSwitchTable, cause, reasonStartedBlocked)
		if !errors.Is(err, cause) {
			t.Errorf("stillBlocked(%q) = %v, does not wrap the cause", tt.stateDir, err)
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, cause.Error()+"; the host stays blocked") || !strings.HasSuffix(msg, tt.want) ||
			!strings.Contains(msg, "inet masque_killswitch") || strings.Contains(msg, "\n") {
			t.Errorf("stillBlocked(%q) = %q, want one line: the cause, blocked by inet masque_killswitch, ending %q", tt.stateDir, msg, tt.want)
		}
	}
}

// TestServerDialerTarget: a blocked start resolves a server's name from
// marked sockets and dials the address under the name; a server dialled
// before is dialled at the address it reached.
func TestServerDialerTarget(t *testing.T) {
	c := &upConfig{upOptions: upOptions{serverOptions: serverOptions{connectTimeout: defaultConnectTimeout}}}
	c.tls = &tls.Config{}
	d := &serverDialer{c: c, mark: 0x4d51, resolveMarked: true}
	tests := []struct {
		server, wantAddr, wantName string
	}{
		{"198.18.1.2:4433", "198.18.1.2:4433", ""},
		{"[2001:db8::1]:443", "[2001:db8::1]:443", ""},
		{"localhost:443", "127.0.0.1:443", "localhost"}, // /etc/hosts: no query
	}
	for _, tt := range tests {
		addr, tc, err := d.target(t.Context(), tunnel.AgentServer{Addr: tt.server})
		if err != nil {
			t.Errorf("target(%s) = %v", tt.server, err)
			continue
		}
		if addr != tt.wantAddr || tc.ServerName != tt.wantName {
			t.Errorf("target(%s) = %q, TLS name %q, want %q, %q", tt.server, addr, tc.ServerName, tt.wantAddr, tt.wantName)
		}
	}
	if c.tls.ServerName != "" {
		t.Errorf("target changed the configuration's TLS name to %q", c.tls.ServerName)
	}
	d.reached = map[string]string{"vpn.example:443": "198.18.1.7:443"}
	d.resolveMarked = false
	if addr, tc, err := d.target(t.Context(), tunnel.AgentServer{Addr: "vpn.example:443"}); err != nil || addr != "198.18.1.7:443" || tc.ServerName != "vpn.example" {
		t.Errorf("target(a server reached before) = %q, %q, %v", addr, tc.ServerName, err)
	}
}

func TestDescribeState(t *testing.T) {
	tests := []struct {
		st   *tun.State
		want string
	}{
		{&tun.State{}, "nothing"},
		{&tun.State{NFTables: []string{tun.DefaultKillSwitchTable}}, "nftables table inet masque_killswitch"},
		{&tun.State{Tun: "masque0", Routing: &tun.Routing{}, NFTables: []string{"masque_killswitch"}, ResolvConf: resolvConf("/run/masque")},
			"policy routing, tun masque0, nftables table inet masque_killswitch, /etc/resolv.conf"},
	}
	for _, tt := range tests {
		if got := describeState(tt.st); got != tt.want {
			t.Errorf("describeState(%+v) = %q, want %q", tt.st, got, tt.want)
		}
	}
}
