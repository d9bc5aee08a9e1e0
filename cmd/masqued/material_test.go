package main

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCertNames(t *testing.T) {
	leaf := &x509.Certificate{
		DNSNames:    []string{"vpn.example", "*.pool.example", "not a name", "a.*.example"},
		IPAddresses: []net.IP{net.IPv4(198, 18, 0, 1), net.ParseIP("2001:db8::1")},
	}
	want := []string{"vpn.example", "*.pool.example", "198.18.0.1", "2001:db8::1"}
	if diff := cmp.Diff(want, certNames(leaf)); diff != "" {
		t.Errorf("certNames mismatch (-want +got):\n%s", diff)
	}
	if got := certNames(nil); got != nil {
		t.Errorf("certNames(nil) = %v, want nil", got)
	}
}

func TestTokensModeOpen(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		mode fs.FileMode
		open bool
	}{
		{0o600, false},
		{0o400, false},
		{0o700, false},
		{0o640, true},
		{0o604, true},
		{0o644, true},
		{0o620, true},
		{0o666, true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%04o", tt.mode), func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("tokens-%04o", tt.mode))
			if err := os.WriteFile(path, []byte("alice 0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil { // not subject to the umask
				t.Fatal(err)
			}
			perm, open := tokensModeOpen(path)
			if perm != tt.mode || open != tt.open {
				t.Errorf("tokensModeOpen(%04o file) = %04o, %v, want %04o, %v", tt.mode, perm, open, tt.mode, tt.open)
			}
			var logs bytes.Buffer
			warnOpenTokens(slog.New(slog.NewTextHandler(&logs, nil)), path)
			lines := strings.Count(logs.String(), "\n")
			switch {
			case !tt.open && lines != 0:
				t.Errorf("warnOpenTokens(%04o file) logged %q, want nothing", tt.mode, logs.String())
			case tt.open && (lines != 1 || !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "chmod 600") ||
				!strings.Contains(logs.String(), "path="+path) || !strings.Contains(logs.String(), fmt.Sprintf("mode=%04o", tt.mode))):
				t.Errorf("warnOpenTokens(%04o file) logged %q, want one WARN line with chmod 600, the path and the mode", tt.mode, logs.String())
			}
		})
	}
	if _, open := tokensModeOpen(filepath.Join(dir, "missing")); open {
		t.Error("tokensModeOpen(missing file) = open, want not open (loading reports it)")
	}
}

// TestConfigCheckOpenTokens: config check accepts a tokens file others may
// read, as run does, and says on stderr how to fix it.
func TestConfigCheckOpenTokens(t *testing.T) {
	dir := t.TempDir()
	pki := filepath.Join(dir, "pki")
	if code := execute([]string{"cert", "--dir", pki, "--host", "127.0.0.1"}); code != exitOK {
		t.Fatalf("cert: exit %d", code)
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("alice 0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tokens, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runMasqued(t, "config", "check", "--cert", filepath.Join(pki, "server.crt"), "--key", filepath.Join(pki, "server.key"), "--tokens", tokens)
	want := "masqued: warning: tokens file " + tokens + " has mode 0644, accessible to group or others: chmod 600 " + tokens + "\n"
	if code != exitOK || out != "configuration ok\n" || errOut != want {
		t.Errorf("config check with a 0644 tokens file: exit %d, stdout %q, stderr %q; want 0, \"configuration ok\", %q", code, out, errOut, want)
	}
}
