package main

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/masque-vpn/masque/tun"
	"github.com/spf13/cobra"
)

func newDownCmd() *cobra.Command {
	var stateDir string
	var force bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Undo what a crashed masque up left behind (TUN, rules, routes)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := filepath.Join(stateDir, "state.json")
			st, err := tun.ReadState(path)
			if errors.Is(err, fs.ErrNotExist) {
				fmt.Fprintln(cmd.OutOrStdout(), "nothing to undo")
				return nil
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
			fmt.Fprintf(cmd.OutOrStdout(), "removed tun %s and its routes\n", st.Tun)
			return nil
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", defaultStateDir, "directory of the state file")
	cmd.Flags().BoolVar(&force, "force", false, "undo even if the owning masque still runs")
	return cmd
}
