package main

import (
	"github.com/masque-vpn/masque/cmd/internal/cli"
	"github.com/spf13/cobra"
)

// logFormat is --log-format (package cli).
type logFormat = cli.LogFormat

const (
	logText = cli.LogText
	logJSON = cli.LogJSON
)

// withLogFormat adds --log-format to cmd, a command that logs, and
// returns cmd; the command reads it with logFormatOf.
func withLogFormat(cmd *cobra.Command) *cobra.Command {
	v := logText
	cmd.Flags().Var(&v, "log-format", "log lines as text (key=value) or json (one object a line)")
	return cmd
}

// logFormatOf returns the --log-format of cmd (text if it has none).
func logFormatOf(cmd *cobra.Command) logFormat {
	if f := cmd.Flags().Lookup("log-format"); f != nil {
		if v, ok := f.Value.(*logFormat); ok {
			return *v
		}
	}
	return logText
}

// newLogger is cli.NewLogger.
var newLogger = cli.NewLogger
