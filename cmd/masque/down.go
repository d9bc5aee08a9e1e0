package main

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"

	"github.com/masque-vpn/masque/tun"
	"github.com/spf13/cobra"
)

func newDownCmd() *cobra.Command {
	var stateDir, tunName string
	var force bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Undo what a crashed masque up left behind (TUN, rules, routes, kill switch, DNS)",
		Long: `Undoes what a masque up that did not exit cleanly left behind, as its state
file records it. If the state file is corrupt, masque down removes what
masque up always creates by its well-known names instead: the policy routing
table and rules, the TUN named by --tun (if it is a TUN no process holds),
the kill switch table inet ` + tun.DefaultKillSwitchTable + ` and the resolv.conf backup
in --state-dir, put back byte for byte; then it moves the file aside to
state.json.corrupt. Running it again is harmless.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			path := filepath.Join(stateDir, "state.json")
			st, err := tun.ReadState(path)
			if errors.Is(err, tun.ErrUntrustedState) {
				return untrustedState(err)
			}
			if errors.Is(err, fs.ErrNotExist) {
				fmt.Fprintln(out, "nothing to undo")
				return nil
			}
			if isCorrupt(err) {
				sock := filepath.Join(stateDir, statusSocket)
				if !force && statusAnswers(sock) {
					return fmt.Errorf("%v, and a masque is running (its status socket %s answers): stop it (Ctrl-C), or use --force", err, sock)
				}
				fmt.Fprintf(out, "%s: removing masque's leftovers by name\n", oneLine(err))
				done, err := sweepCorrupt(stateDir, path, tunName)
				for _, d := range done {
					fmt.Fprintln(out, d)
				}
				return err
			}
			if err != nil {
				return fmt.Errorf("state file %s: %v", path, err)
			}
			if !force && processAlive(st.PID) {
				return fmt.Errorf("masque is running as pid %d: stop it (Ctrl-C or kill %d), or use --force", st.PID, st.PID)
			}
			if err := tun.Undo(st); err != nil {
				return err
			}
			if err := tun.RemoveState(path); err != nil {
				return err
			}
			fmt.Fprintf(out, "undid what masque up (pid %d) left: %s\n", st.PID, describeState(st))
			return nil
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", defaultStateDir, "directory of the state file")
	cmd.Flags().StringVar(&tunName, "tun", defaultTun, "TUN device name masque up used (needed only when the state file is corrupt)")
	cmd.Flags().BoolVar(&force, "force", false, "undo even if the owning masque still runs")
	return cmd
}

// describeState lists what Undo of st reverses, for the user.
func describeState(st *tun.State) string {
	var what []string
	if st.Routing != nil {
		what = append(what, "policy routing")
	}
	if st.Tun != "" {
		what = append(what, "tun "+st.Tun)
	}
	for _, t := range st.NFTables {
		what = append(what, "nftables table inet "+t)
	}
	if len(st.Sysctls) > 0 {
		what = append(what, "sysctls")
	}
	if st.ResolvConf != nil {
		what = append(what, st.ResolvConf.Path)
	}
	if len(what) == 0 {
		return "nothing"
	}
	return strings.Join(what, ", ")
}
