package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// corePattern is the host-wide sysctl a planted state names: as root code
// execution (a pipe to a program of the planter's), it is the worst thing
// a root-run undo could be steered to write.
const corePattern = "/proc/sys/kernel/core_pattern"

// TestPlantedStateRefused: a state.json that masque up never writes (a
// core_pattern sysctl, another namespace-local sysctl, a foreign nftables
// table, a foreign routing table and rule priority, a resolv_conf whose
// path is a passwd-like file and whose backup is a file of the planter's)
// is corrupt to masque down: it removes only masque's leftovers by name
// (there are none) and moves the file aside. Every foreign thing is as it
// was: the namespace's links, addresses, routes, rules and ruleset, the
// sysctls and both files.
func TestPlantedStateRefused(t *testing.T) {
	tp := newTopo(t, false)
	// The planted resolv_conf cannot reach /etc/resolv.conf, but the
	// by-name sweep of a corrupt state restores it from the state
	// directory: give the namespace a file of its own all the same.
	nsDir := filepath.Join("/etc/netns", tp.client)
	if err := os.MkdirAll(nsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(nsDir) })
	resolv := "# the client host's own resolver\nnameserver 192.0.2.53\n"
	if err := os.WriteFile(filepath.Join(nsDir, "resolv.conf"), []byte(resolv), 0o644); err != nil {
		t.Fatal(err)
	}

	// Foreign things in the client namespace, removed before the
	// teardown compares it with its initial state.
	t.Cleanup(func() {
		for _, argv := range [][]string{
			{"nft", "delete", "table", "inet", "mqe_foreign"},
			{"ip", "route", "flush", "table", "100"},
			{"ip", "rule", "del", "pref", "100"},
			{"ip", "rule", "del", "pref", "101"},
		} {
			runInErr(tp.client, 10*time.Second, argv...)
		}
	})
	for _, argv := range [][]string{
		{"nft", "add", "table", "inet", "mqe_foreign"},
		{"nft", "add", "chain", "inet", "mqe_foreign", "out", "{ type filter hook output priority 0; policy accept; }"},
		{"ip", "route", "add", "blackhole", "198.18.99.0/24", "table", "100"},
		{"ip", "rule", "add", "pref", "100", "lookup", "main", "suppress_prefixlength", "0"},
		{"ip", "rule", "add", "pref", "101", "lookup", "100"},
	} {
		if r := runIn(t, tp.client, 10*time.Second, argv...); r.code != 0 {
			t.Fatalf("%s: exit %d: %s", strings.Join(argv, " "), r.code, r.stderr)
		}
	}
	dir := t.TempDir()
	passwd := filepath.Join(dir, "passwd")
	passwdBytes := "root:x:0:0:root:/root:/bin/bash\n"
	if err := os.WriteFile(passwd, []byte(passwdBytes), 0o644); err != nil {
		t.Fatal(err)
	}
	evil := filepath.Join(dir, "evil")
	if err := os.Mkdir(evil, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(evil, "resolv.conf.orig"), []byte("pwned::0:0::/:/bin/sh\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	core, err := os.ReadFile(corePattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if now, _ := os.ReadFile(corePattern); string(now) != string(core) {
			os.WriteFile(corePattern, []byte(strings.TrimSuffix(string(core), "\n")), 0)
		}
	})
	ttl := runIn(t, tp.client, 10*time.Second, "cat", "/proc/sys/net/ipv4/ip_default_ttl").stdout

	stateDir := t.TempDir()
	path := filepath.Join(stateDir, "state.json")
	planted := `{"version":1,"pid":4242,` +
		`"sysctls":{"kernel/core_pattern":"|/bin/false mqe","net/ipv4/ip_default_ttl":"1"},` +
		`"nft_tables":["mqe_foreign"],` +
		`"routing":{"table":100,"rule_priority":100},` +
		`"resolv_conf":{"path":"` + passwd + `","backup":"` + filepath.Join(evil, "resolv.conf.orig") + `"}}`
	if err := os.WriteFile(path, []byte(planted), 0o600); err != nil {
		t.Fatal(err)
	}
	before, err := snapshot(tp.client)
	if err != nil {
		t.Fatal(err)
	}

	r := runIn(t, tp.client, 20*time.Second, env.masque, "down", "--state-dir", stateDir)
	t.Logf("masque down: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	if r.code != 0 {
		t.Errorf("masque down of a planted state: exit %d, want 0 (corrupt: masque's leftovers by name)", r.code)
	}
	for _, want := range []string{
		"corrupt state",
		`"kernel/core_pattern" is not a sysctl masque sets`,
		`"mqe_foreign" is not one of masque's tables`,
		"routing: table: 100 is not masque's table",
		`resolv_conf: path "` + passwd + `" is not /etc/resolv.conf`,
		"found none of masque's leftovers",
		"moved the corrupt state file to " + path + ".corrupt",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("masque down did not say %q", want)
		}
	}
	after, err := snapshot(tp.client)
	if err != nil {
		t.Fatal(err)
	}
	if d := after.diff(before); d != "" {
		t.Errorf("masque down of a planted state changed the namespace (+ added, - removed):\n%s", d)
	}
	if rs := ruleset(t, tp.client); !strings.Contains(rs, "table inet mqe_foreign {") {
		t.Errorf("the foreign table is gone:\n%s", rs)
	}
	if rules := runIn(t, tp.client, 10*time.Second, "ip", "rule", "show").stdout; !strings.Contains(rules, "100:\tfrom all lookup main suppress_prefixlength 0") {
		t.Errorf("the foreign rule at priority 100 is gone:\n%s", rules)
	}
	if now, _ := os.ReadFile(corePattern); string(now) != string(core) {
		t.Errorf("kernel.core_pattern = %q after masque down, was %q", now, core)
	}
	if now := runIn(t, tp.client, 10*time.Second, "cat", "/proc/sys/net/ipv4/ip_default_ttl").stdout; now != ttl {
		t.Errorf("net.ipv4.ip_default_ttl = %q after masque down, was %q", now, ttl)
	}
	if now, _ := os.ReadFile(passwd); string(now) != passwdBytes {
		t.Errorf("the passwd-like file = %q after masque down, want it untouched", now)
	}
	if _, err := os.Stat(filepath.Join(evil, "resolv.conf.orig")); err != nil {
		t.Errorf("the planted backup is gone: %v", err)
	}
	if now := runIn(t, tp.client, 10*time.Second, "cat", "/etc/resolv.conf").stdout; now != resolv {
		t.Errorf("resolv.conf = %q after masque down, want %q", now, resolv)
	}
}

// TestUntrustedStateDirRefused: a state directory that others may write
// to, a state file of another user's and a state file that is a symbolic
// link are refused by masque down and masque up with one line naming the
// path and the problem, exit 2, and nothing changes: the kill switch
// table the (valid) state names stays.
func TestUntrustedStateDirRefused(t *testing.T) {
	tp := newTopo(t, false)
	t.Cleanup(func() { runInErr(tp.client, 10*time.Second, "nft", "delete", "table", "inet", "masque_killswitch") })
	if r := runIn(t, tp.client, 10*time.Second, "nft", "add", "table", "inet", "masque_killswitch"); r.code != 0 {
		t.Fatalf("nft add table: exit %d: %s", r.code, r.stderr)
	}
	state := []byte(`{"version":1,"pid":4242,"nft_tables":["masque_killswitch"]}`)
	other := t.TempDir()
	target := filepath.Join(other, "state.json")
	if err := os.WriteFile(target, state, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		setup func(dir string) error
		want  string
	}{
		{"directory mode 0777", func(dir string) error {
			if err := os.WriteFile(filepath.Join(dir, "state.json"), state, 0o600); err != nil {
				return err
			}
			return os.Chmod(dir, 0o777)
		}, "state directory <dir>: writable by group or others (mode 0777)"},
		{"file of nobody's", func(dir string) error {
			p := filepath.Join(dir, "state.json")
			if err := os.WriteFile(p, state, 0o600); err != nil {
				return err
			}
			return os.Chown(p, 65534, 65534)
		}, "state file <dir>/state.json: owned by uid 65534, not uid 0"},
		{"file is a symbolic link", func(dir string) error {
			return os.Symlink(target, filepath.Join(dir, "state.json"))
		}, "state file <dir>/state.json: a symbolic link"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := tt.setup(dir); err != nil {
				t.Fatal(err)
			}
			want := strings.ReplaceAll(tt.want, "<dir>", dir)
			before, err := snapshot(tp.client)
			if err != nil {
				t.Fatal(err)
			}
			for _, argv := range [][]string{
				{env.masque, "down", "--state-dir", dir},
				clientArgv(dir, tokenAuth("alice"), "--connect-timeout", "2s"),
			} {
				what := "masque " + argv[1]
				r := runIn(t, tp.client, 20*time.Second, argv...)
				if r.code != 2 {
					t.Errorf("%s: exit %d, want 2\nstdout: %s\nstderr: %s", what, r.code, r.stdout, r.stderr)
				}
				checkErrorLine(t, what, r.stderr, "masque: ")
				if !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "refused") {
					t.Errorf("%s: error does not say %q and refused: %s", what, want, r.stderr)
				}
			}
			after, err := snapshot(tp.client)
			if err != nil {
				t.Fatal(err)
			}
			if d := after.diff(before); d != "" {
				t.Errorf("a refused state changed the namespace (+ added, - removed):\n%s", d)
			}
		})
	}
	if !strings.Contains(ruleset(t, tp.client), "table inet masque_killswitch {") {
		t.Error("the table the refused states name is gone")
	}
}

// TestMasquedPlantedState: masqued refuses a state directory of mode 0777
// (exit 2, one line, nothing changed), and of a planted state in a
// trusted one (core_pattern, a foreign nft table) undoes nothing: it
// says so, comes up, and the foreign table and core_pattern are as they
// were.
func TestMasquedPlantedState(t *testing.T) {
	tp := newTopo(t, false)
	open := t.TempDir()
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	r := runIn(t, tp.server, 20*time.Second, env.masqued, "run", "--listen", serverAddr,
		"--cert", env.certDir+"/server.crt", "--key", env.certDir+"/server.key", "--tokens", env.tokens,
		"--state-dir", open)
	if r.code != 2 {
		t.Errorf("masqued run --state-dir (mode 0777): exit %d, want 2\nstderr: %s", r.code, r.stderr)
	}
	checkErrorLine(t, "masqued run with an untrusted state directory", r.stderr, "masqued: ", "state directory "+open+": writable by group or others (mode 0777)")
	if entries, _ := os.ReadDir(open); len(entries) > 0 {
		t.Errorf("masqued wrote %v into the untrusted state directory", entries)
	}
	tp.checkClean(tp.server)

	t.Cleanup(func() { runInErr(tp.server, 10*time.Second, "nft", "delete", "table", "inet", "mqe_foreign") })
	if r := runIn(t, tp.server, 10*time.Second, "nft", "add", "table", "inet", "mqe_foreign"); r.code != 0 {
		t.Fatalf("nft add table: exit %d: %s", r.code, r.stderr)
	}
	core, err := os.ReadFile(corePattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if now, _ := os.ReadFile(corePattern); string(now) != string(core) {
			os.WriteFile(corePattern, []byte(strings.TrimSuffix(string(core), "\n")), 0)
		}
	})
	dir := t.TempDir()
	planted := `{"version":1,"pid":4242,"sysctls":{"kernel/core_pattern":"|/bin/false mqe"},"nft_tables":["mqe_foreign"]}`
	if err := os.WriteFile(filepath.Join(dir, "state.json"), []byte(planted), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := tp.startServer(t, "--state-dir", dir)
	if !strings.Contains(srv.proc.stderr.String(), "ignoring unreadable state file") {
		t.Errorf("masqued did not say it ignores the planted state:\n%s", tail(srv.proc.stderr.String(), 3000))
	}
	if rs := ruleset(t, tp.server); !strings.Contains(rs, "table inet mqe_foreign {") {
		t.Errorf("masqued deleted the foreign table:\n%s", rs)
	}
	if now, _ := os.ReadFile(corePattern); string(now) != string(core) {
		t.Errorf("kernel.core_pattern = %q after masqued started, was %q", now, core)
	}
}
