package flagfile

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// repeat is a Repeatable flag value, as masqued's --udp-allow.
type repeat struct{ vals *[]string }

func (r repeat) String() string     { return strings.Join(*r.vals, ",") }
func (r repeat) Type() string       { return "ID=PATTERN" }
func (r repeat) Set(v string) error { *r.vals = append(*r.vals, v); return nil }
func (r repeat) Repeatable()        {}

// testFlags is a flag set of every kind Apply handles.
func testFlags() (*pflag.FlagSet, *[]string) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.String("server", "", "")
	fs.StringArray("route", []string{"0.0.0.0/0"}, "")
	fs.Bool("kill-switch", true, "")
	fs.Int("mtu", 1400, "")
	fs.Duration("timeout", time.Second, "")
	fs.String("config", "", "")
	var allow []string
	fs.Var(repeat{&allow}, "allow", "")
	return fs, &allow
}

// TestApply: the file sets what the command line did not, the environment
// beats the file, the command line beats both; a list replaces its
// default; a Repeatable value gets each element; reserved keys are refused.
func TestApply(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.conf")
	os.WriteFile(path, []byte("server = \"a:1\"\nroute = [\"10.0.0.0/8\", \"192.0.2.0/24\"]\nkill-switch = false\nmtu = 1300\ntimeout = \"3s\"\nallow = [\"a=x\", \"b=y\"]\n"), 0o600)
	fs, allow := testFlags()
	if err := fs.Parse([]string{"--mtu", "1350"}); err != nil {
		t.Fatal(err)
	}
	err := Apply(fs, path, Options{EnvPrefix: "T_", Environ: []string{"T_SERVER=env:1", "T_MTU=1"}, Reserved: []string{"config"}})
	if err != nil {
		t.Fatalf("Apply = %v", err)
	}
	if v, _ := fs.GetString("server"); v != "env:1" {
		t.Errorf("server = %q, want the environment's", v)
	}
	if v, _ := fs.GetStringArray("route"); !slices.Equal(v, []string{"10.0.0.0/8", "192.0.2.0/24"}) {
		t.Errorf("route = %q", v)
	}
	if v, _ := fs.GetBool("kill-switch"); v || !fs.Changed("kill-switch") {
		t.Errorf("kill-switch = %v, changed %v", v, fs.Changed("kill-switch"))
	}
	if v, _ := fs.GetInt("mtu"); v != 1350 {
		t.Errorf("mtu = %d, want the command line's", v)
	}
	if v, _ := fs.GetDuration("timeout"); v != 3*time.Second {
		t.Errorf("timeout = %v", v)
	}
	if !slices.Equal(*allow, []string{"a=x", "b=y"}) {
		t.Errorf("allow = %q", *allow)
	}
	os.WriteFile(path, []byte("config = \"x\"\nserver_x = 1\n[t]\n"), 0o600)
	fs, _ = testFlags()
	err = Apply(fs, path, Options{Reserved: []string{"config"}})
	es, ok := err.(Errors)
	if !ok || len(es) != 3 || !strings.Contains(es[0].Error(), `x.conf:1:1: unknown key "config"`) || !strings.Contains(es[1].Error(), `:2:1: unknown key "server_x"`) || !strings.Contains(es[2].Error(), ":3:2: tables are not used") {
		t.Errorf("Apply(reserved key, unknown key, table) = %v", err)
	}
}

// FuzzApplyTOML: whatever the file holds, ApplyTOML returns errors that
// name the file, and never panics.
func FuzzApplyTOML(f *testing.F) {
	f.Add([]byte("server = \"a:1\"\nroute = [\"10.0.0.0/8\"]\n"))
	f.Add([]byte("[t]\nx = 1"))
	f.Add([]byte("a.b.c = {x = [1, [2]]}"))
	f.Add([]byte("allow = [\"a=b\", 3]\nmtu = 1e3\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fs, _ := testFlags()
		for _, err := range ApplyTOML(fs, map[string]bool{}, []string{"config"}, "p.conf", b) {
			if !strings.HasPrefix(err.Error(), "p.conf") {
				t.Fatalf("error without the file's name: %v", err)
			}
		}
	})
}
