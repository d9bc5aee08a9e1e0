package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInstallScript: scripts/install.sh, run twice under DESTDIR with a
// PREFIX, installs both binaries and both units pointing at them, creates
// the configuration directories 0700, enables nothing, and the second run
// changes nothing but a directory mode someone opened.
func TestInstallScript(t *testing.T) {
	if testing.Short() {
		t.Skip("builds both commands")
	}
	dest := t.TempDir()
	install := func() string {
		t.Helper()
		cmd := exec.Command("bash", "../../scripts/install.sh")
		cmd.Env = append(os.Environ(), "DESTDIR="+dest, "PREFIX=/opt/masque")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("install.sh: %v\n%s", err, out)
		}
		return string(out)
	}
	bin := filepath.Join(dest, "opt/masque/bin")
	units := filepath.Join(dest, "etc/systemd/system")
	files := []string{filepath.Join(bin, "masqued"), filepath.Join(bin, "masque"), filepath.Join(units, "masqued.service"), filepath.Join(units, "masque@.service")}
	dirs := []string{filepath.Join(dest, "etc/masqued"), filepath.Join(dest, "etc/masque")}

	out := install()
	for _, f := range files {
		if !strings.Contains(out, "installed "+f+"\n") {
			t.Errorf("first run does not say it installed %s:\n%s", f, out)
		}
	}
	for _, d := range dirs {
		if !strings.Contains(out, "created "+d+" (mode 0700)\n") {
			t.Errorf("first run does not say it created %s:\n%s", d, out)
		}
	}
	if !strings.Contains(out, "Nothing is enabled.") || strings.Contains(out, "systemctl daemon-reload\n") {
		t.Errorf("install.sh under DESTDIR told systemd or did not say nothing is enabled:\n%s", out)
	}
	for _, name := range []string{"masqued", "masque"} {
		v, err := exec.Command(filepath.Join(bin, name), "--version").Output()
		if err != nil || !strings.HasPrefix(string(v), name+" ") {
			t.Errorf("installed %s --version = %q, %v", name, v, err)
		}
	}
	for unit, want := range map[string]string{
		"masqued.service": "ExecStart=/opt/masque/bin/masqued run --config /etc/masqued/masqued.conf\n",
		"masque@.service": "ExecStart=/opt/masque/bin/masque up %i\n",
	} {
		b, err := os.ReadFile(filepath.Join(units, unit))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), want) || strings.Contains(string(b), "/usr/local/bin") {
			t.Errorf("installed %s lacks %q or still names /usr/local/bin", unit, want)
		}
	}
	checkModes := func(when string) {
		t.Helper()
		for _, f := range files {
			if fi, err := os.Stat(f); err != nil || fi.Mode().Perm()&0o044 != 0o044 {
				t.Errorf("%s: %s: %v, %v; want readable by all", when, f, fi.Mode(), err)
			}
		}
		for _, d := range dirs {
			if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
				t.Errorf("%s: %s: mode %v, %v; want 0700", when, d, fi.Mode(), err)
			}
		}
	}
	checkModes("after the first run")

	if err := os.Chmod(dirs[1], 0o755); err != nil {
		t.Fatal(err)
	}
	out = install()
	for _, f := range append(files, dirs[0]) {
		if !strings.Contains(out, "unchanged "+f+"\n") {
			t.Errorf("second run does not say %s is unchanged:\n%s", f, out)
		}
	}
	if !strings.Contains(out, "chmod 0700 "+dirs[1]) {
		t.Errorf("second run does not say it closed %s:\n%s", dirs[1], out)
	}
	checkModes("after the second run")
}
