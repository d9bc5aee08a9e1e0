package main

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// TestFlagGroups: run --help and config check --help list every flag once,
// under the groups in their order, and none under Other flags.
func TestFlagGroups(t *testing.T) {
	for _, args := range [][]string{{"run", "--help"}, {"config", "check", "--help"}} {
		code, out, errOut := runMasqued(t, args...)
		if code != exitOK || errOut != "" {
			t.Fatalf("masqued %q: exit %d, stderr %q", args, code, errOut)
		}
		last := -1
		for _, g := range serverFlagGroups {
			i := strings.Index(out, "\n"+g.name+":\n")
			if i < 0 || i < last {
				t.Errorf("masqued %q: heading %q missing or out of order:\n%s", args, g.name, out)
			}
			last = i
		}
		if strings.Contains(out, otherFlags+":") {
			t.Errorf("masqued %q: flags of no group:\n%s", args, out[strings.Index(out, otherFlags+":"):])
		}
		cmd, _, err := newRootCmd().Find(args[:len(args)-1])
		if err != nil {
			t.Fatal(err)
		}
		cmd.InitDefaultHelpFlag()
		flags := out[max(strings.Index(out, "\n"+serverFlagGroups[0].name+":\n"), 0):] // past the usage line and examples
		cmd.Flags().VisitAll(func(fl *pflag.Flag) {
			if n := strings.Count(flags, "--"+fl.Name+" "); n != 1 {
				t.Errorf("masqued %q: --%s listed %d times, want once", args, fl.Name, n)
			}
		})
	}
}

// TestGroupedUsage: a flag of no group is listed under Other flags, after
// the groups; a group none of whose flags exist is left out.
func TestGroupedUsage(t *testing.T) {
	cmd := &cobra.Command{Use: "x", Example: "  x --b", Run: func(*cobra.Command, []string) {}}
	cmd.Flags().Bool("a", false, "flag a")
	cmd.Flags().Bool("b", false, "flag b")
	cmd.Flags().Bool("c", false, "flag c")
	got := groupedUsage(cmd, []flagGroup{{"First", []string{"b", "a"}}, {"Empty", []string{"gone"}}})
	want := "Usage:\n  x [flags]\n\nExamples:\n  x --b\n\nFirst:\n      --b   flag b\n      --a   flag a\n\nOther flags:\n      --c   flag c\n"
	if got != want {
		t.Errorf("groupedUsage = %q, want %q", got, want)
	}
}

// TestDurationFlags: run's timeouts are typed as durations: a duration is
// kept as written, for resolve to parse like the file's string, and
// anything else is refused by the flag parser on one line naming the flag.
func TestDurationFlags(t *testing.T) {
	var c Config
	var path string
	cmd := &cobra.Command{Use: "x", Run: func(*cobra.Command, []string) {}}
	serverFlags(cmd, &c, &path)
	fields := map[string]*string{
		"drain-timeout":       &c.DrainTimeout,
		"request-timeout":     &c.RequestTimeout,
		"udp-idle-timeout":    &c.UDPIdleTimeout,
		"udp-resolve-timeout": &c.UDPResolveTimeout,
	}
	cmd.Flags().VisitAll(func(fl *pflag.Flag) {
		if strings.HasSuffix(fl.Name, "-timeout") && fields[fl.Name] == nil {
			t.Errorf("--%s is a timeout but not in this test's list", fl.Name)
		}
	})
	for name, field := range fields {
		fl := cmd.Flags().Lookup(name)
		if fl == nil || fl.Value.Type() != "duration" {
			t.Errorf("--%s: %v, want a flag of type duration", name, fl)
			continue
		}
		if err := cmd.Flags().Set(name, "1m30s"); err != nil || *field != "1m30s" {
			t.Errorf("--%s 1m30s: %v, field %q; want nil, %q", name, err, *field, "1m30s")
		}
		code, _, errOut := runMasqued(t, "config", "check", "--"+name, "soon")
		want := `masqued: invalid argument "soon" for "--` + name + `" flag: want a duration like 5s, 1m30s or 2h` + "\n"
		if code != exitUsage || errOut != want {
			t.Errorf("config check --%s soon: exit %d, stderr %q; want %d, %q", name, code, errOut, exitUsage, want)
		}
	}
	c.Cert, c.Key, c.Tokens = "server.crt", "server.key", "tokens" // resolve wants them; it reads no file
	s, err := c.resolve()
	if err != nil {
		t.Fatalf("resolve with 1m30s timeouts: %v", err)
	}
	if s.DrainTimeout.String() != "1m30s" || s.UDPIdleTimeout.String() != "1m30s" {
		t.Errorf("resolve: drain %v, UDP idle %v, want 1m30s", s.DrainTimeout, s.UDPIdleTimeout)
	}
}

// TestExamples: every masqued command has examples in its --help, and
// each example's command line parses.
func TestExamples(t *testing.T) {
	root := newRootCmd()
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Name() != "help" && c.Name() != "completion" {
			checkExamples(t, root, c, "masqued")
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	if code, out, _ := runMasqued(t, "run", "--help"); code != exitOK || !strings.Contains(out, "\nExamples:\n  # From a configuration file") {
		t.Errorf("masqued run --help: exit %d, no examples:\n%s", code, out)
	}
}

// checkExamples checks that c has examples and that each line of them
// that runs prog parses as a command line of root.
func checkExamples(t *testing.T, root, c *cobra.Command, prog string) {
	t.Helper()
	if !c.HasExample() {
		t.Errorf("%s has no examples", c.CommandPath())
		return
	}
	for _, line := range strings.Split(c.Example, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != prog {
			continue
		}
		cmd, rest, err := root.Find(f[1:])
		if err != nil {
			t.Errorf("%s example %q: %v", c.CommandPath(), line, err)
			continue
		}
		err = cmd.ParseFlags(rest)
		if err == nil && cmd.Args != nil {
			err = cmd.Args(cmd, cmd.Flags().Args())
		}
		if err != nil {
			t.Errorf("%s example %q: %v", c.CommandPath(), line, err)
		}
	}
}
