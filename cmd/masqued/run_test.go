package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
)

// TestServerNameFlag: --server-name given twice on the command line
// replaces the file's list.
func TestServerNameFlag(t *testing.T) {
	var (
		c    Config
		path string
	)
	cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
	l := newConfigLoader(cmd, &c, &path)
	file := filepath.Join(t.TempDir(), "m.conf")
	if err := os.WriteFile(file, []byte("cert = \"c\"\nkey = \"k\"\ntokens = \"t\"\nserver-name = [\"old.example\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := cmd.ParseFlags([]string{"--config", file, "--server-name", "vpn.example", "--server-name", "198.18.0.1"}); err != nil {
		t.Fatal(err)
	}
	s, err := l.load()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"vpn.example", "198.18.0.1"}, s.ServerNames); diff != "" {
		t.Errorf("server-name after flags mismatch (-want +got):\n%s", diff)
	}
}
