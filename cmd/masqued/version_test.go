package main

import (
	"bytes"
	"testing"

	"github.com/masque-vpn/masque/cmd/internal/cli"
)

// TestVersionFlag: masqued --version prints its name and the build, on one
// line of stdout.
func TestVersionFlag(t *testing.T) {
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs([]string{"--version"})
	if err := root.Execute(); err != nil {
		t.Fatalf("masqued --version: %v", err)
	}
	want := "masqued " + cli.ReadBuildInfo().String() + "\n"
	if out.String() != want || errOut.Len() != 0 {
		t.Errorf("masqued --version: stdout %q, stderr %q; want %q and nothing", out.String(), errOut.String(), want)
	}
}
