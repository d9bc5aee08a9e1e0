package main

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
)

func TestServerNameFlag(t *testing.T) {
	var (
		c    Config
		path string
	)
	cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
	serverFlags(cmd, &c, &path)
	if err := cmd.ParseFlags([]string{"--server-name", "vpn.example", "--server-name", "198.18.0.1"}); err != nil {
		t.Fatal(err)
	}
	file := &Config{ServerNames: []string{"old.example"}}
	mergeFlags(cmd, file, &c)
	if diff := cmp.Diff([]string{"vpn.example", "198.18.0.1"}, file.ServerNames); diff != "" {
		t.Errorf("server_names after flags mismatch (-want +got):\n%s", diff)
	}
}
