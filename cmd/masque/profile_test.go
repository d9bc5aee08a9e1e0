package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func writeProfile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "work.conf")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestProfileMerge: the file sets what the command line did not, the
// environment beats the file, the command line beats both, and a list in
// the file replaces the flag's default rather than adding to it.
func TestProfileMerge(t *testing.T) {
	path := writeProfile(t, `# work VPN
server = ["vpn.example.com:443", "vpn2.example.com:443"]
route = ["10.0.0.0/8", "192.0.2.0/24"]
kill-switch = false
mtu = 1300
connect-timeout = "3s"
token-file = "/etc/masque/work.token"
`)
	cmd := newUpCmd()
	f := cmd.Flags()
	if err := f.Parse([]string{"--mtu", "1350"}); err != nil {
		t.Fatal(err)
	}
	env := []string{"MASQUE_TOKEN_FILE=/run/env.token", "MASQUE_MTU=1290", "OTHER=1", "MASQUE_NOT_A_FLAG=x"}
	if err := applyProfile(f, path, env); err != nil {
		t.Fatalf("applyProfile = %v", err)
	}
	str := func(n string) string { v, _ := f.GetString(n); return v }
	if got, _ := f.GetStringArray("server"); !slices.Equal(got, []string{"vpn.example.com:443", "vpn2.example.com:443"}) {
		t.Errorf("server = %q, want the file's two", got)
	}
	if got, _ := f.GetStringArray("route"); !slices.Equal(got, []string{"10.0.0.0/8", "192.0.2.0/24"}) {
		t.Errorf("route = %q, want the file's two", got)
	}
	if got, _ := f.GetBool("kill-switch"); got || !f.Changed("kill-switch") {
		t.Errorf("kill-switch = %v (changed %v), want false and set", got, f.Changed("kill-switch"))
	}
	if got, _ := f.GetInt("mtu"); got != 1350 {
		t.Errorf("mtu = %d, want the command line's 1350 over the environment's and the file's", got)
	}
	if got, _ := f.GetDuration("connect-timeout"); got != 3*time.Second {
		t.Errorf("connect-timeout = %v, want 3s", got)
	}
	if got := str("token-file"); got != "/run/env.token" {
		t.Errorf("token-file = %q, want the environment's over the file's", got)
	}
	if f.Changed("accept-dns") {
		t.Error("accept-dns marked set though nothing set it")
	}
}

// TestProfileErrors: every problem of a file at once, each with its line
// and column.
func TestProfileErrors(t *testing.T) {
	tests := []struct {
		name string
		body string
		want []string // each a line of the error, after the file name
	}{
		{"unknown keys", "server = \"a:1\"\nbogus = 1\n  token_file = \"x\"\n", []string{
			`:2:1: unknown key "bogus"`,
			`:3:3: unknown key "token_file" (did you mean "token-file"?)`,
		}},
		{"types", "mtu = \"big\"\nkill-switch = \"yes\"\ntun = [\"a\", \"b\"]\nroute = 10\nconnect-timeout = 5\n", []string{
			`:1:1: mtu: want a number, not a string (write it without quotes)`,
			`:2:1: kill-switch: want true or false, not a string (write it without quotes)`,
			`:3:1: tun: want a string, not a list`,
			`:4:1: route: want a string or a list of strings, not a number`,
			`:5:1: connect-timeout: want a duration in quotes ("10s"), not a number`,
		}},
		{"bad values", "mtu = 99999999999999999999\n", []string{":1:7: "}},
		{"duration", "connect-timeout = \"soon\"\n", []string{`:1:1: connect-timeout: time: invalid duration "soon"`}},
		{"duplicate", "server = \"a:1\"\nserver = \"b:1\"\n", []string{":2:1: "}},
		{"syntax", "server = \"a:1\"\nroute = [\"10.0.0.0/8\",,]\n", []string{":2:"}},
		{"table", "server = \"a:1\"\n[extra]\nx = 1\n", []string{":2:2: tables are not used"}},
		{"dotted", "route.x = \"10.0.0.0/8\"\n", []string{`:1:1: unknown key "route.x"`}},
		{"chooses the profile", "config = \"other.conf\"\nconfig-dir = \"/tmp\"\n", []string{
			`:1:1: unknown key "config"`, `:2:1: unknown key "config-dir"`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeProfile(t, tt.body)
			f := newUpCmd().Flags()
			err := applyProfile(f, path, nil)
			if err == nil {
				t.Fatal("applyProfile = nil, want an error")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.want) {
				t.Fatalf("%d error lines, want %d:\n%v", len(lines), len(tt.want), err)
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(lines[i], path+w) {
					t.Errorf("line %d = %q, want it to start with %q", i+1, lines[i], path+w)
				}
			}
		})
	}
}

// TestProfileResolve: NAME reads DIR/NAME.conf, --config names the
// instance after its file, and neither is the default instance.
func TestProfileResolve(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "work.conf"), []byte("server = \"a:1\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pf := profileFlags{configDir: dir}
	if name, path, err := pf.resolve([]string{"work"}, true); err != nil || name != "work" || path != filepath.Join(dir, "work.conf") {
		t.Errorf("resolve(work) = %q, %q, %v", name, path, err)
	}
	if _, _, err := pf.resolve([]string{"home"}, true); err == nil || !strings.Contains(err.Error(), "home.conf does not exist") {
		t.Errorf("resolve(home) = %v, want a missing profile", err)
	}
	if name, path, err := pf.resolve([]string{"home"}, false); err != nil || name != "home" || path != "" {
		t.Errorf("resolve(home) without needing the file = %q, %q, %v", name, path, err)
	}
	if _, _, err := pf.resolve([]string{"../etc"}, true); err == nil || !strings.Contains(err.Error(), "want 1-32 of a-z") {
		t.Errorf("resolve(../etc) = %v, want a bad name", err)
	}
	if name, path, err := pf.resolve(nil, true); err != nil || name != defaultInstance || path != "" {
		t.Errorf("resolve() = %q, %q, %v, want the default instance without a file", name, path, err)
	}
	pf.config = "/srv/profiles/office.toml"
	if name, path, err := pf.resolve(nil, true); err != nil || name != "office" || path != pf.config {
		t.Errorf("resolve(--config) = %q, %q, %v", name, path, err)
	}
	if _, _, err := pf.resolve([]string{"work"}, true); err == nil {
		t.Error("resolve(work, --config) = nil, want an error")
	}
	if got := instanceTun("a-very-long-profile"); got != "masque-a-very-l" || instanceTun(defaultInstance) != "masque0" {
		t.Errorf("instanceTun = %q, %q", got, instanceTun(defaultInstance))
	}
}

// TestProfileTrust: a root run refuses a profile others may write.
func TestProfileTrust(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (CI runs as root)")
	}
	path := writeProfile(t, "server = \"a:1\"\n")
	if err := checkProfileTrust(path); err != nil {
		t.Errorf("checkProfileTrust(0600 root file) = %v", err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := checkProfileTrust(path); err == nil || !strings.Contains(err.Error(), "writable by group or others (mode 0666): chmod go-w") {
		t.Errorf("checkProfileTrust(0666) = %v", err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, 65534, 0); err != nil {
		t.Fatal(err)
	}
	if err := checkProfileTrust(path); err == nil || !strings.Contains(err.Error(), "owned by uid 65534, not root") {
		t.Errorf("checkProfileTrust(nobody's) = %v", err)
	}
}

// TestProfileInlineCredentials: a profile may hold the CA, the token and
// a client key inline (masqued invite writes such a file); a command line
// may not, and a profile with a secret must be root's alone.
func TestProfileInlineCredentials(t *testing.T) {
	f := newUpCmd().Flags()
	if err := f.Parse([]string{"--token", "0123456789abcdef0123"}); err != nil {
		t.Fatal(err)
	}
	if err := applyProfile(f, "", nil); err == nil || !strings.Contains(err.Error(), "--token: a profile key, not a flag") {
		t.Errorf("--token on the command line = %v, want a refusal", err)
	}
	path := writeProfile(t, "server = \"198.18.1.2:4433\"\ntoken = \"0123456789abcdef0123\"\nca-pem = \"\"\"\nnot pem\n\"\"\"\n")
	f = newUpCmd().Flags()
	if err := applyProfile(f, path, nil); err != nil {
		t.Fatalf("applyProfile = %v", err)
	}
	if err := checkProfileSecrets(f, path); err != nil {
		t.Errorf("checkProfileSecrets(0600) = %v", err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkProfileSecrets(f, path); err == nil || !strings.Contains(err.Error(), "holds a secret and is readable by group or others (mode 0644): chmod 600") {
		t.Errorf("checkProfileSecrets(0644) = %v", err)
	}
	var o upOptions
	o.inlineToken, _ = f.GetString("token")
	o.caPEM, _ = f.GetString("ca-pem")
	if _, _, err := o.credentials(); err == nil || !strings.Contains(err.Error(), "ca-pem: no PEM certificate") {
		t.Errorf("credentials with a bad ca-pem = %v", err)
	}
	o.caPEM = ""
	if _, tok, err := o.credentials(); err != nil || tok != "0123456789abcdef0123" {
		t.Errorf("credentials = %q, %v; want the profile's token", tok, err)
	}
}
