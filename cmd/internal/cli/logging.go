package cli

import (
	"errors"
	"io"
	"log/slog"

	"github.com/spf13/pflag"
)

// LogFormat is --log-format: how log lines are written.
type LogFormat string

const (
	LogText LogFormat = "text" // key=value pairs (slog.TextHandler)
	LogJSON LogFormat = "json" // one JSON object a line (slog.JSONHandler)
)

var _ pflag.Value = (*LogFormat)(nil)

func (f *LogFormat) String() string { return string(*f) }
func (f *LogFormat) Type() string   { return "text|json" }

func (f *LogFormat) Set(v string) error {
	switch LogFormat(v) {
	case LogText, LogJSON:
		*f = LogFormat(v)
		return nil
	}
	return errors.New("want text or json")
}

// AddLogFormatFlag adds --log-format to f, bound to v (text unless set).
func AddLogFormatFlag(f *pflag.FlagSet, v *LogFormat) {
	*v = LogText
	f.Var(v, "log-format", "log lines as text (key=value) or json (one object a line)")
}

// NewLogger returns the logger that writes to w at level (a valid
// --log-level, checked before) in format.
func NewLogger(w io.Writer, level string, format LogFormat) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: l}
	if format == LogJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
