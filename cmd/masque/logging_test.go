package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLogFormat: up and udp take --log-format text or json and log in
// it; anything else is a usage error on one line that names the flag.
func TestLogFormat(t *testing.T) {
	for _, name := range []string{"up", "udp"} {
		t.Run(name, func(t *testing.T) {
			root := newRootCmd()
			cmd, _, err := root.Find([]string{name})
			if err != nil {
				t.Fatal(err)
			}
			if got := logFormatOf(cmd); got != logText {
				t.Errorf("masque %s: log format %q before parsing, want text", name, got)
			}
			if err := cmd.ParseFlags([]string{"--log-format", "json"}); err != nil {
				t.Fatalf("masque %s --log-format json: %v", name, err)
			}
			if got := logFormatOf(cmd); got != logJSON {
				t.Errorf("masque %s --log-format json: log format %q", name, got)
			}
			var buf bytes.Buffer
			newLogger(&buf, "info", logFormatOf(cmd)).Info("tunnel up", "tun", "masque0")
			var line map[string]any
			if err := json.Unmarshal(buf.Bytes(), &line); err != nil || line["msg"] != "tunnel up" || line["tun"] != "masque0" {
				t.Errorf("json logger wrote %q (%v), want an object with msg and tun", buf.String(), err)
			}

			root = newRootCmd()
			root.SetArgs([]string{name, "--log-format", "yaml"})
			err = root.Execute()
			want := `invalid argument "yaml" for "--log-format" flag: want text or json`
			if err == nil || err.Error() != want {
				t.Errorf("masque %s --log-format yaml = %v, want %q", name, err, want)
			}
		})
	}
	var buf bytes.Buffer
	newLogger(&buf, "warn", logText).Info("hidden")
	newLogger(&buf, "warn", logText).Warn("tunnel lost, reconnecting")
	if got := buf.String(); strings.Contains(got, "hidden") || !strings.Contains(got, `level=WARN msg="tunnel lost, reconnecting"`) {
		t.Errorf("text logger at warn wrote %q", got)
	}
}

// TestLogFormatInProfile: a profile sets log-format like any up flag, and
// MASQUE_LOG_FORMAT too; a bad value is named with its line.
func TestLogFormatInProfile(t *testing.T) {
	tests := []struct {
		name, profile string
		env           []string
		want          logFormat
		wantErr       string
	}{
		{"profile", "server = \"vpn.example.com:443\"\nlog-format = \"json\"\n", nil, logJSON, ""},
		{"environment", "server = \"vpn.example.com:443\"\n", []string{"MASQUE_LOG_FORMAT=json"}, logJSON, ""},
		{"default", "server = \"vpn.example.com:443\"\n", nil, logText, ""},
		{"bad value", "server = \"vpn.example.com:443\"\nlog-format = \"xml\"\n", nil, logText, ":2:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "work.conf")
			if err := os.WriteFile(path, []byte(tt.profile), 0o600); err != nil {
				t.Fatal(err)
			}
			cmd, _, err := newRootCmd().Find([]string{"up"})
			if err != nil {
				t.Fatal(err)
			}
			err = applyProfile(cmd.Flags(), path, tt.env)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("applyProfile = %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "want text or json")):
				t.Fatalf("applyProfile = %v, want an error with %q and the values", err, tt.wantErr)
			}
			if got := logFormatOf(cmd); got != tt.want {
				t.Errorf("log format after the profile = %q, want %q", got, tt.want)
			}
		})
	}
}
