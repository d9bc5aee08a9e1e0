package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/masque-vpn/masque/tun"
	"github.com/spf13/cobra"
)

func newDownCmd() *cobra.Command {
	var (
		stateDir, tunName string
		force             bool
		pf                profileFlags
	)
	cmd := &cobra.Command{
		Use:   "down [NAME]",
		Short: "Stop an instance, or undo what a crashed masque up left behind",
		Long: `Stops the running masque up of instance NAME (default: the default instance)
through its status socket: it restores the host as Ctrl-C would, and masque
down waits for it to exit. Without a running one, undoes what a masque up that
did not exit cleanly left behind, as its state file records it. If the state
file is corrupt, masque down removes what masque up always creates by its
well-known names instead: the policy routing table and rules, the TUN named by
--tun (if it is a TUN no process holds), the kill switch table inet ` + tun.DefaultKillSwitchTable + `,
the --allow-forward table inet ` + tun.DefaultGatewayTable + ` and the resolv.conf backup in
--state-dir, put back byte for byte; then it moves the file aside to
state.json.corrupt. Running it again is harmless.`,
		Example: `  masque down work      # stop instance work, from any shell
  masque down           # the default instance
  masque down --state-dir /run/masque/x --tun masque-x`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := instanceDirs(cmd, &pf, args, &stateDir, &tunName)
			if err != nil {
				return err
			}
			if os.Geteuid() != 0 {
				return fmt.Errorf("down: needs root to restore routes and the firewall: sudo masque down %s", name)
			}
			out := cmd.OutOrStdout()
			sock := filepath.Join(stateDir, statusSocket)
			if pid, err := stopRunning(sock, downWait); err != nil {
				return err
			} else if pid > 0 {
				fmt.Fprintf(out, "stopped instance %s (pid %d)\n", name, pid)
				// A run that ended blocked (a forced exit with the kill
				// switch on) left its state: undone below.
			}
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
				return fmt.Errorf("masque is running as pid %d but its status socket %s does not answer: stop it (kill %d), or use --force", st.PID, sock, st.PID)
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
	pf.addFlags(cmd.Flags(), false)
	cmd.Flags().StringVar(&stateDir, "state-dir", instanceStateDir(defaultInstance), "directory of the state file (default /run/masque/NAME)")
	cmd.Flags().StringVar(&tunName, "tun", defaultTun, "TUN device name masque up used (needed only when the state file is corrupt; default masque0 or masque-NAME)")
	cmd.Flags().BoolVar(&force, "force", false, "undo even if the owning masque still runs")
	return cmd
}

// downWait bounds how long masque down waits for a run it stopped to
// restore the host and exit (its own drain is shorter).
const downWait = 20 * time.Second

// stopRunning asks the masque whose status socket is sock to stop (POST
// /down) and waits, at most wait, until its process is gone. It returns
// the process's PID, or 0 if nothing answered on sock.
func stopRunning(sock string, wait time.Duration) (int, error) {
	hc := statusClient(sock)
	rsp, err := hc.Post("http://masque/down", "application/json", nil)
	if err != nil {
		return 0, nil // nothing listens: no live run (or one that predates the socket)
	}
	defer rsp.Body.Close()
	var r struct{ PID int }
	if err := json.NewDecoder(rsp.Body).Decode(&r); err != nil || rsp.StatusCode != http.StatusAccepted || r.PID <= 0 {
		return 0, fmt.Errorf("stop the masque on %s: %s", sock, rsp.Status)
	}
	for deadline := time.Now().Add(wait); processAlive(r.PID); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			return r.PID, fmt.Errorf("masque (pid %d) did not exit within %s of being asked to stop", r.PID, wait)
		}
	}
	return r.PID, nil
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
