package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newListCmd() *cobra.Command {
	var pf profileFlags
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the profiles and the instances on this host, and their state",
		Example: `  masque list
  masque list --config-dir ./profiles`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			names, err := instanceNames(pf.configDir)
			if err != nil {
				return err
			}
			if len(names) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "no profiles in %s and no instances in %s\n", pf.configDir, defaultStateDir)
				return nil
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tSTATE\tSERVER\tTUN")
			for _, n := range names {
				state, server, tunName := instanceState(&pf, n)
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", n, state, server, tunName)
			}
			return w.Flush()
		},
	}
	pf.addFlags(cmd.Flags(), false)
	return cmd
}

// instanceNames returns, sorted, the names of the profiles in dir and of
// the instances with a state directory.
func instanceNames(dir string) ([]string, error) {
	var names []string
	confs, err := filepath.Glob(filepath.Join(dir, "*.conf"))
	if err != nil {
		return nil, err
	}
	for _, c := range confs {
		if n := strings.TrimSuffix(filepath.Base(c), ".conf"); instanceName.MatchString(n) {
			names = append(names, n)
		}
	}
	ents, err := os.ReadDir(defaultStateDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("%s: permission denied: run as root (sudo masque list)", defaultStateDir)
		}
		return nil, err
	}
	for _, e := range ents {
		if e.IsDir() && instanceName.MatchString(e.Name()) {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// instanceState says in a word or two what instance name is doing.
func instanceState(pf *profileFlags, name string) (state, server, tunName string) {
	_, path, _ := pf.resolve([]string{name}, false)
	dir, _, err := profileDirs(name, path)
	if err != nil {
		return "profile broken: " + strings.SplitN(err.Error(), "\n", 2)[0], "-", "-"
	}
	st, err := queryStatus(filepath.Join(dir, statusSocket))
	if err == nil {
		return st.State, st.Server, st.Tun
	}
	if !errors.Is(err, errNotRunning) {
		return "unknown: " + oneLine(err), "-", "-"
	}
	switch kind, st, _ := inspectLeftovers(dir); kind {
	case leftBlocked:
		return "crashed, host blocked: run masque down " + name, "-", st.Tun
	case leftChanges, leftUnreadable:
		return "crashed: run masque down " + name, "-", "-"
	case leftAlive:
		return "running, not answering", "-", st.Tun
	case leftDenied:
		return "unknown: run as root", "-", "-"
	}
	return "down", "-", "-"
}
