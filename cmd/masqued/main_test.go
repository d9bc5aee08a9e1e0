package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestExecuteExitCodes(t *testing.T) {
	dir := t.TempDir()
	pki := filepath.Join(dir, "pki")
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("alice 0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	writeConfig := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := writeConfig("good.json", `{"cert":"`+filepath.Join(pki, "server.crt")+`","key":"`+filepath.Join(pki, "server.key")+`","tokens":"`+tokens+`","listen":"127.0.0.1:4433"}`)
	unknownKey := writeConfig("unknown.json", `{"lissen":"127.0.0.1:4433"}`)
	missingCert := writeConfig("missing.json", `{"cert":"/nonexistent/server.crt","key":"/nonexistent/server.key","tokens":"`+tokens+`"}`)

	tests := []struct {
		name string
		args []string
		want int
	}{
		{"no command", nil, exitOK},
		{"unknown flag", []string{"--bogus"}, exitUsage},
		{"unknown subcommand flag", []string{"run", "--bogus"}, exitUsage},
		{"unknown command", []string{"frobnicate"}, exitUsage},
		{"run with a bad CIDR", []string{"run", "--pool4", "10.0.0.1/8", "--cert", "x", "--key", "y", "--tokens", "z"}, exitUsage},
		{"run without a certificate", []string{"run", "--tokens", "z"}, exitUsage},
		{"run with a bad MTU", []string{"run", "--mtu", "9000", "--cert", "x", "--key", "y", "--tokens", "z"}, exitUsage},
		{"run with a missing config file", []string{"run", "--config", filepath.Join(dir, "nope.json")}, exitUsage},
		{"run with an unknown config key", []string{"run", "--config", unknownKey}, exitUsage},
		{"run with arguments", []string{"run", "extra"}, exitUsage},
		{"cert without --dir", []string{"cert", "--host", "vpn.example.com"}, exitUsage},
		{"cert without --host", []string{"cert", "--dir", pki}, exitUsage},
		{"cert with a bad client name", []string{"cert", "--dir", pki, "--host", "h", "--client", "a b"}, exitUsage},
		{"cert with a reserved client name", []string{"cert", "--dir", pki, "--host", "h", "--client", "ca"}, exitUsage},
		{"cert with zero days", []string{"cert", "--dir", pki, "--host", "h", "--days", "0"}, exitUsage},
		// The config checks below use what this writes.
		{"cert", []string{"cert", "--dir", pki, "--host", "127.0.0.1", "--client", "alice"}, exitOK},
		{"config check", []string{"config", "check", "--config", good}, exitOK},
		{"config check with a flag override", []string{"config", "check", "--config", good, "--pool6", "off"}, exitOK},
		{"config check with a bad override", []string{"config", "check", "--config", good, "--pool6", "fd00::1/64"}, exitUsage},
		{"config check with missing files", []string{"config", "check", "--config", missingCert}, exitUsage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := execute(tt.args); got != tt.want {
				t.Errorf("execute(%q) = %d, want %d", tt.args, got, tt.want)
			}
		})
	}
}
