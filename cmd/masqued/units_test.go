package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// unitsDir holds the systemd units shipped with the repository.
const unitsDir = "../../scripts/systemd"

// unitSettings returns the KEY=VALUE lines of a unit file, by key, in order.
func unitSettings(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: line %q is not KEY=VALUE", path, line)
		}
		out[k] = append(out[k], v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSystemdUnits: systemd-analyze verify passes both units without a
// word. It needs no running systemd; it is not skipped where
// systemd-analyze is missing, since CI installs it (scripts/test.sh).
func TestSystemdUnits(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze not found (install the systemd package): %v", err)
	}
	// verify insists that ExecStart= binaries exist: the copies point at
	// stubs instead of /usr/local/bin.
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"masqued", "masque"} {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, unit := range []string{"masqued.service", "masque@.service"} {
		b, err := os.ReadFile(filepath.Join(unitsDir, unit))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "/usr/local/bin/") {
			t.Errorf("%s names no /usr/local/bin binary", unit)
		}
		b = []byte(strings.ReplaceAll(string(b), "/usr/local/bin/", bin+"/"))
		if err := os.WriteFile(filepath.Join(dir, unit), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The template is verified through an instance; --man=no: the units
	// name no man page.
	cmd := exec.Command(analyze, "verify", "--man=no", filepath.Join(dir, "masqued.service"), filepath.Join(dir, "masque@work.service"))
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0", "SYSTEMD_PAGER=cat")
	out, err := cmd.CombinedOutput()
	if err != nil || len(out) != 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestSystemdUnitSettings: the units are Type=notify and hardened as
// their comments say, and masqued.service runs a command line masqued
// takes.
func TestSystemdUnitSettings(t *testing.T) {
	hardening := map[string]string{
		"Type":                    "notify",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"ProtectControlGroups":    "yes",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_NETLINK AF_UNIX",
		"DeviceAllow":             "/dev/net/tun rw",
		"LockPersonality":         "yes",
		"MemoryDenyWriteExecute":  "yes",
		"RestrictRealtime":        "yes",
		"SystemCallArchitectures": "native",
		"Restart":                 "on-failure",
	}
	tests := []struct {
		unit string
		want map[string]string
	}{
		{"masqued.service", map[string]string{
			"ExecStart":             "/usr/local/bin/masqued run --config /etc/masqued/masqued.conf",
			"ExecReload":            "/bin/kill -HUP $MAINPID",
			"CapabilityBoundingSet": "CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
			"AmbientCapabilities":   "CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
			"StateDirectory":        "masqued",
			"StateDirectoryMode":    "0700",
		}},
		{"masque@.service", map[string]string{
			"ExecStart":             "/usr/local/bin/masque up %i",
			"ExecStop":              "/usr/local/bin/masque down %i",
			"CapabilityBoundingSet": "CAP_NET_ADMIN",
			"AmbientCapabilities":   "CAP_NET_ADMIN",
			"RuntimeDirectory":      "masque",
			"ReadWritePaths":        "-/etc/resolv.conf",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.unit, func(t *testing.T) {
			got := unitSettings(t, filepath.Join(unitsDir, tt.unit))
			for k, v := range hardening {
				if !slices.Equal(got[k], []string{v}) {
					t.Errorf("%s: %s=%q, want %s=%s once", tt.unit, k, got[k], k, v)
				}
			}
			for k, v := range tt.want {
				if !slices.Equal(got[k], []string{v}) {
					t.Errorf("%s: %s=%q, want %s=%s once", tt.unit, k, got[k], k, v)
				}
			}
			// Both write sysctls under /proc/sys (see the unit's comment).
			if v, ok := got["ProtectKernelTunables"]; ok {
				t.Errorf("%s: ProtectKernelTunables=%v would make /proc/sys read-only", tt.unit, v)
			}
			// PrivateDevices' /dev has no /dev/net/tun.
			if v, ok := got["PrivateDevices"]; ok {
				t.Errorf("%s: PrivateDevices=%v would hide /dev/net/tun", tt.unit, v)
			}
		})
	}

	// masqued.service's command line is one masqued takes.
	argv := strings.Fields(unitSettings(t, filepath.Join(unitsDir, "masqued.service"))["ExecStart"][0])[1:]
	cmd, rest, err := newRootCmd().Find(argv)
	if err == nil {
		err = cmd.ParseFlags(rest)
	}
	if err != nil || cmd.Name() != "run" {
		t.Errorf("masqued.service ExecStart %q: command %q, %v; want run with flags masqued takes", argv, cmd.Name(), err)
	}
}
