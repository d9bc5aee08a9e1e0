package tun

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestResolvConf(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	setManagedResolvConf(t, path)
	orig := []byte("# the host's own\nnameserver 192.0.2.53\nsearch example\noptions edns0\n")
	if err := os.WriteFile(path, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	r := &ResolvConf{Path: path, Backup: filepath.Join(dir, "state", "resolv.conf.orig")}
	if err := os.Mkdir(filepath.Dir(r.Backup), 0o700); err != nil {
		t.Fatal(err)
	}
	servers := []netip.Addr{netip.MustParseAddr("198.18.2.53"), netip.MustParseAddr("2001:db8:2::53")}
	if err := r.Apply(servers); err != nil {
		t.Fatalf("Apply = %v", err)
	}
	got, _ := os.ReadFile(path)
	for _, want := range []string{"nameserver 198.18.2.53\n", "nameserver 2001:db8:2::53\n"} {
		if !strings.Contains(string(got), want) {
			t.Errorf("resolv.conf after Apply lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(string(got), "192.0.2.53") {
		t.Errorf("resolv.conf after Apply still names the host's server:\n%s", got)
	}
	// A second Apply (a reconnect) keeps the true original in the backup.
	if err := r.Apply(servers[:1]); err != nil {
		t.Fatalf("second Apply = %v", err)
	}
	// Undo through a state, as masque down does after a crash.
	if err := Undo(&State{Version: StateVersion, ResolvConf: r}); err != nil {
		t.Fatalf("Undo = %v", err)
	}
	if got, _ := os.ReadFile(path); string(got) != string(orig) {
		t.Errorf("resolv.conf after Undo:\n%q\nwant the original byte for byte:\n%q", got, orig)
	}
	if _, err := os.Stat(r.Backup); !os.IsNotExist(err) {
		t.Errorf("backup left after Restore: %v", err)
	}
	if err := r.Restore(); err != nil {
		t.Errorf("Restore without a backup = %v, want nil", err)
	}

	// A symbolic link belongs to a resolver daemon: refused, untouched.
	link := filepath.Join(dir, "stub.conf")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	rl := &ResolvConf{Path: link, Backup: filepath.Join(dir, "state", "stub.orig")}
	if err := rl.Apply(servers); err == nil {
		t.Error("Apply on a symbolic link = nil error")
	}
	if got, _ := os.ReadFile(path); string(got) != string(orig) {
		t.Errorf("the link's target changed:\n%s", got)
	}
	for _, bad := range []*ResolvConf{{Path: "relative", Backup: "/b"}, {Path: "/a", Backup: "/a"}} {
		if err := bad.Apply(servers); err == nil {
			t.Errorf("Apply(%+v) = nil error", bad)
		}
		if err := (&State{Version: StateVersion, ResolvConf: bad}).Validate(); err == nil {
			t.Errorf("State with %+v validates", bad)
		}
	}
	if err := r.Apply(nil); err == nil {
		t.Error("Apply(no servers) = nil error")
	}
}

// setManagedResolvConf points ManagedResolvConf at path for the test.
func setManagedResolvConf(t *testing.T, path string) {
	old := ManagedResolvConf
	ManagedResolvConf = path
	t.Cleanup(func() { ManagedResolvConf = old })
}
