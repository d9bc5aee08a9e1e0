package main

import (
	"os"
	"strings"
	"testing"
)

func TestExecuteExitCodes(t *testing.T) {
	empty := t.TempDir() // a state dir with nothing in it
	open := t.TempDir()  // a state dir that others may write to
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"no command", nil, exitOK},
		{"unknown flag", []string{"--bogus"}, exitUsage},
		{"unknown command", []string{"sideways"}, exitUsage},
		{"up with a bad route", []string{"up", "--route", "bad"}, exitUsage},
		{"up with a bad route and a server", []string{"up", "--server", "vpn.example.com:443", "--token-file", "/nonexistent", "--route", "198.18.0.1/15"}, exitUsage},
		{"up without a server", []string{"up", "--token-file", "/nonexistent"}, exitUsage},
		{"up with a missing token file", []string{"up", "--server", "vpn.example.com:443", "--token-file", "/nonexistent"}, exitUsage},
		{"up with a bad duration", []string{"up", "--connect-timeout", "soon"}, exitUsage},
		{"up with arguments", []string{"up", "extra"}, exitUsage},
		{"up with a bad log format", []string{"up", "--log-format", "xml"}, exitUsage},
		{"udp with a bad log format", []string{"udp", "--log-format", "xml"}, exitUsage},
		{"down with nothing to undo", []string{"down", "--state-dir", empty}, exitOK},
		{"down with a state dir writable by others", []string{"down", "--state-dir", open}, exitUsage},
		{"down with a missing state dir under one writable by others", []string{"down", "--state-dir", open + "/new"}, exitUsage},
		{"down with two names", []string{"down", "a", "b"}, exitUsage},
		{"down with a bad name", []string{"down", "../etc", "--state-dir", empty}, exitUsage},
		{"status with a bad name", []string{"status", "Work"}, exitUsage},
		{"status without a tunnel", []string{"status", "--state-dir", empty}, exitFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := execute(tt.args); got != tt.want {
				t.Errorf("execute(%q) = %d, want %d", tt.args, got, tt.want)
			}
		})
	}
}

// TestManPages: masque man writes a page per command, with the flags of
// --help in it.
func TestManPages(t *testing.T) {
	dir := t.TempDir()
	if got := execute([]string{"man", dir}); got != exitOK {
		t.Fatalf("masque man = %d", got)
	}
	b, err := os.ReadFile(dir + "/masque-up.1")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--kill-switch", "--config", "masque up work"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("masque-up.1 lacks %q", want)
		}
	}
	for _, page := range []string{"masque.1", "masque-down.1", "masque-status.1", "masque-list.1", "masque-udp.1"} {
		if _, err := os.Stat(dir + "/" + page); err != nil {
			t.Errorf("no %s: %v", page, err)
		}
	}
}
