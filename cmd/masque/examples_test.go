package main

import (
	"strings"
	"testing"
)

// TestExamples: masque, masque up and masque udp have examples in their
// --help, and each example's command line parses.
func TestExamples(t *testing.T) {
	root := newRootCmd()
	for _, path := range [][]string{nil, {"up"}, {"udp"}} {
		c, _, err := root.Find(path)
		if err != nil {
			t.Fatal(err)
		}
		if !c.HasExample() {
			t.Errorf("%s has no examples", c.CommandPath())
			continue
		}
		for _, line := range strings.Split(c.Example, "\n") {
			line, _, _ = strings.Cut(line, "#") // a comment
			f := strings.Fields(line)
			if len(f) == 0 || f[0] != "masque" {
				continue
			}
			cmd, rest, err := root.Find(f[1:])
			if err == nil {
				err = cmd.ParseFlags(rest)
			}
			if err == nil && cmd.Args != nil {
				err = cmd.Args(cmd, cmd.Flags().Args())
			}
			if err != nil {
				t.Errorf("%s example %q: %v", c.CommandPath(), line, err)
			}
		}
	}
}
