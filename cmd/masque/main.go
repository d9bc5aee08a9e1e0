// Command masque is the masque VPN client: it puts this host's traffic into
// a TUN device and carries it to a masqued server over CONNECT-IP.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/masque-vpn/masque/cmd/internal/cli"
	"github.com/masque-vpn/masque/cmd/internal/flagfile"
	"github.com/masque-vpn/masque/tun"
	"github.com/spf13/cobra"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // runtime failure
	exitUsage   = 2 // usage or configuration error
)

// defaultStateDir holds the client's crash-recovery state and its status
// socket.
const defaultStateDir = "/run/masque"

// usageError marks an error as the user's input being wrong (exit 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "masque",
		Short: "masque VPN client: CONNECT-IP over HTTP/3",
		Example: `  # Bring a full tunnel up in the foreground, then look at it from another shell:
  masque up --server vpn.example.com:443 --token-file /etc/masque/token
  masque status
  # After a crash, undo what the tunnel left behind:
  masque down`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       cli.ReadBuildInfo().String(),
	}
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(withLogFormat(newUpCmd()), newDownCmd(), newStatusCmd(), newListCmd(), withLogFormat(newUDPCmd()), cli.ManCmd("masque"))
	return root
}

func main() {
	os.Exit(execute(os.Args[1:]))
}

func execute(args []string) int {
	root := newRootCmd()
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	printError(os.Stderr, err)
	var ue usageError
	// A state directory that others may write to is the configuration's
	// fault, wherever in the run a state write found it.
	if errors.As(err, &ue) || isCobraUsage(err) || errors.Is(err, tun.ErrUntrustedState) {
		return exitUsage
	}
	return exitFailure
}

// printError prints err on one line: a profile's problems, each of which
// names its line and column, one to a line.
func printError(w io.Writer, err error) {
	if ce, ok := errors.AsType[flagfile.Errors](err); ok {
		for _, e := range ce {
			fmt.Fprintf(w, "masque: %v\n", e)
		}
		return
	}
	fmt.Fprintf(w, "masque: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
}

// isCobraUsage reports errors cobra returns for a wrong command line.
func isCobraUsage(err error) bool {
	s := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand", "accepts ", "requires at least", "required flag"} {
		if strings.Contains(s, p) {
			return true
		}
	}
	return false
}
