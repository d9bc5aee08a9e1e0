// Command masqued is the masque VPN server: it terminates CONNECT-IP
// tunnels over HTTP/3 and bridges them to the network.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/masque-vpn/masque/cmd/internal/cli"
	"github.com/masque-vpn/masque/tun"
	"github.com/spf13/cobra"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // runtime failure
	exitUsage   = 2 // usage or configuration error
)

// usageError marks an error as the user's input being wrong (exit 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "masqued",
		Short: "masque VPN server: CONNECT-IP over HTTP/3",
		Example: `  # A CA, a server certificate for vpn.example.com and a client certificate:
  masqued cert --dir /etc/masqued/pki --host vpn.example.com --client alice
  # Check a configuration, then serve it:
  masqued config check --config /etc/masqued/masqued.json
  masqued run --config /etc/masqued/masqued.json`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       cli.ReadBuildInfo().String(),
	}
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newRunCmd(), newCertCmd(), newConfigCmd(), newInviteCmd(), cli.ManCmd("masqued"))
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
	// One line, however many problems the error joins.
	fmt.Fprintf(os.Stderr, "masqued: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
	var ue usageError
	// A state directory that others may write to is the configuration's
	// fault, wherever in the run a state write found it.
	if errors.As(err, &ue) || isCobraUsage(err) || errors.Is(err, tun.ErrUntrustedState) {
		return exitUsage
	}
	return exitFailure
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
