package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// durationString is a flag whose value is a duration ("5s", "2m") kept as
// the string a Config field holds, so that the flag and the file's key
// share the field and resolve parses both alike. The flag parser refuses
// what is not a duration, naming the flag, and --help shows its type.
type durationString struct{ s *string }

var _ pflag.Value = durationString{}

func (d durationString) String() string { return *d.s }
func (d durationString) Type() string   { return "duration" }

func (d durationString) Set(v string) error {
	if _, err := time.ParseDuration(v); err != nil {
		return errors.New("want a duration like 5s, 1m30s or 2h")
	}
	*d.s = v
	return nil
}

// durationVar defines a duration flag bound to the Config string p.
func durationVar(f *pflag.FlagSet, p *string, name, usage string) {
	f.Var(durationString{p}, name, usage)
}

// flagGroup is a heading of --help and the flags listed under it.
type flagGroup struct {
	name  string
	flags []string
}

// serverFlagGroups orders the flags of run and config check in --help.
var serverFlagGroups = []flagGroup{
	{"Listening", []string{"listen", "cert", "key", "server-name"}},
	{"Authentication", []string{"tokens", "client-ca"}},
	{"Addresses", []string{"pool4", "pool6", "lease-time", "tun", "mtu", "egress", "route", "dns"}},
	{"Destinations", []string{"allow", "deny", "allow-client-to-client"}},
	{"Limits", []string{"max-conns", "max-conns-per-source", "max-handshake-rate", "retry-threshold",
		"max-sessions-per-conn", "max-sessions-per-identity", "request-timeout"}},
	{"CONNECT-UDP", []string{"udp-allow", "udp-anonymous", "udp-idle-timeout", "udp-resolve-timeout",
		"udp-max-flows-per-conn", "udp-max-flows-per-identity"}},
	{"Logging and operations", []string{"config", "state-dir", "log-level", "log-format", "qlog", "metrics", "pprof", "drain-timeout", "help"}},
}

// otherFlags heads the flags of no group.
const otherFlags = "Other flags"

// groupFlags makes cmd's usage (in --help and after a usage error) list
// its flags group by group, in the order of groups and of each group's
// flags; flags of no group come last, under Other flags.
func groupFlags(cmd *cobra.Command, groups []flagGroup) {
	cmd.SetUsageFunc(func(c *cobra.Command) error {
		_, err := io.WriteString(c.OutOrStderr(), groupedUsage(c, groups))
		return err
	})
}

// groupedUsage returns c's usage as cobra's default template writes it,
// with the flags under one heading per group.
func groupedUsage(c *cobra.Command, groups []flagGroup) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage:\n  %s\n", c.UseLine())
	if c.HasExample() {
		fmt.Fprintf(&b, "\nExamples:\n%s\n", strings.TrimRight(c.Example, "\n"))
	}
	all := pflag.NewFlagSet(c.Name(), pflag.ContinueOnError)
	all.AddFlagSet(c.LocalFlags())
	all.AddFlagSet(c.InheritedFlags())
	listed := map[string]bool{}
	section := func(heading string, flags []*pflag.Flag) {
		fs := pflag.NewFlagSet(heading, pflag.ContinueOnError)
		fs.SortFlags = false
		for _, fl := range flags {
			if !fl.Hidden {
				fs.AddFlag(fl)
			}
		}
		if fs.HasAvailableFlags() {
			fmt.Fprintf(&b, "\n%s:\n%s", heading, fs.FlagUsages())
		}
	}
	for _, g := range groups {
		var flags []*pflag.Flag
		for _, name := range g.flags {
			if fl := all.Lookup(name); fl != nil {
				flags = append(flags, fl)
				listed[name] = true
			}
		}
		section(g.name, flags)
	}
	var rest []*pflag.Flag
	all.VisitAll(func(fl *pflag.Flag) {
		if !listed[fl.Name] {
			rest = append(rest, fl)
		}
	})
	section(otherFlags, rest)
	return b.String()
}
