package cli

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// ManCmd is the hidden "NAME man DIR" command of the command NAME: it
// writes the man pages of every command, generated from the commands
// themselves (cobra/doc), so they never drift from --help.
func ManCmd(name string) *cobra.Command {
	return &cobra.Command{
		Use:     "man DIR",
		Short:   "Write the man pages (" + name + ".1, " + name + "-COMMAND.1, …) into DIR",
		Example: "  " + name + " man /usr/local/share/man/man1",
		Args:    cobra.ExactArgs(1),
		Hidden:  true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			root := cmd.Root()
			root.DisableAutoGenTag = true
			if err := doc.GenManTree(root, &doc.GenManHeader{Title: strings.ToUpper(name), Section: "1", Source: "masque"}, args[0]); err != nil {
				return fmt.Errorf("man: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote the man pages into %s\n", args[0])
			return nil
		},
	}
}
