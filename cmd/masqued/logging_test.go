package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestNewLogger(t *testing.T) {
	tests := []struct {
		format logFormat
		want   func(t *testing.T, line string)
	}{
		{logText, func(t *testing.T, line string) {
			if !strings.Contains(line, ` level=INFO msg="tunnel ready" tun=masqued0 sessions=2`) {
				t.Errorf("text line %q lacks level=INFO msg=\"tunnel ready\" tun=masqued0 sessions=2", line)
			}
		}},
		{logJSON, func(t *testing.T, line string) {
			var got map[string]any
			if err := json.Unmarshal([]byte(line), &got); err != nil {
				t.Fatalf("json line %q: %v", line, err)
			}
			delete(got, "time")
			want := map[string]any{"level": "INFO", "msg": "tunnel ready", "tun": "masqued0", "sessions": 2.0}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("json line mismatch (-want +got):\n%s", diff)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(string(tt.format), func(t *testing.T) {
			var buf bytes.Buffer
			logger := newLogger(&buf, "info", tt.format)
			logger.Debug("below the level")
			logger.Info("tunnel ready", "tun", "masqued0", "sessions", 2)
			lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
			if len(lines) != 1 {
				t.Fatalf("logged %q, want one line (debug is below info)", buf.String())
			}
			tt.want(t, lines[0])
		})
	}
}

// TestLogFormatFlag: --log-format takes text or json; anything else is a
// usage error on one line that names the flag.
func TestLogFormatFlag(t *testing.T) {
	for _, args := range [][]string{
		{"run", "--log-format", "xml", "--cert", "x", "--key", "y", "--tokens", "z"},
		{"config", "check", "--log-format", "JSON", "--cert", "x", "--key", "y", "--tokens", "z"},
	} {
		code, out, errOut := runMasqued(t, args...)
		want := `masqued: invalid argument "` + args[len(args)-7] + `" for "--log-format" flag: want text or json` + "\n"
		if code != exitUsage || out != "" || errOut != want {
			t.Errorf("masqued %q: exit %d, stdout %q, stderr %q; want %d, nothing, %q", args, code, out, errOut, exitUsage, want)
		}
	}
	var f logFormat
	for _, v := range []string{"text", "json"} {
		if err := f.Set(v); err != nil || f.String() != v {
			t.Errorf("Set(%q) = %v, value %q; want nil, %q", v, err, f.String(), v)
		}
	}
}
