package main

import (
	"errors"
	"io"
	"log/slog"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// logFormat is --log-format: how log lines are written.
type logFormat string

const (
	logText logFormat = "text" // key=value pairs (slog.TextHandler)
	logJSON logFormat = "json" // one JSON object a line (slog.JSONHandler)
)

var _ pflag.Value = (*logFormat)(nil)

func (f *logFormat) String() string { return string(*f) }
func (f *logFormat) Type() string   { return "text|json" }

func (f *logFormat) Set(v string) error {
	switch logFormat(v) {
	case logText, logJSON:
		*f = logFormat(v)
		return nil
	}
	return errors.New("want text or json")
}

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

// newLogger returns the logger that writes to w at level (a valid
// --log-level; validate checked it) in format.
func newLogger(w io.Writer, level string, format logFormat) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: l}
	if format == logJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
