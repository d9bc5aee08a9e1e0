package tun

import (
	"fmt"
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

// TestResolvConfAtomic samples resolv.conf from a goroutine while Apply
// rewrites it many times: every sample is one whole configuration, never
// an empty or partial file.
func TestResolvConfAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	orig := "nameserver 192.0.2.53\n"
	if err := os.WriteFile(path, []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &ResolvConf{Path: path, Backup: filepath.Join(dir, "resolv.conf.orig")}
	// Two configurations of different lengths, so that a write in place
	// would show a shrunk or cut file.
	configs := [][]netip.Addr{
		{netip.MustParseAddr("198.18.2.53")},
		{netip.MustParseAddr("198.18.2.53"), netip.MustParseAddr("2001:db8:2::53"), netip.MustParseAddr("2001:db8:2::54")},
	}
	valid := map[string]bool{orig: true}
	for _, c := range configs {
		if err := r.Apply(c); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(path)
		valid[string(b)] = true
	}
	stop := make(chan struct{})
	bad := make(chan string, 1)
	samples := make(chan int, 1)
	go func() {
		n := 0
		defer func() { samples <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			b, err := os.ReadFile(path)
			n++
			if err != nil || !valid[string(b)] {
				select {
				case bad <- fmt.Sprintf("%q (err %v)", b, err):
				default:
				}
				return
			}
		}
	}()
	for i := range 300 {
		if err := r.Apply(configs[i%2]); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	n := <-samples
	select {
	case s := <-bad:
		t.Fatalf("a reader saw %s while resolv.conf was rewritten", s)
	default:
	}
	if n < 100 {
		t.Logf("only %d samples", n)
	} else {
		t.Logf("%d samples", n)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("temporary files left in %s: %v", dir, entries)
	}
}

// TestResolvConfUnchanged: an Apply that would write what is there already
// leaves the file alone.
func TestResolvConfUnchanged(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	r := &ResolvConf{Path: path, Backup: filepath.Join(dir, "resolv.conf.orig")}
	servers := []netip.Addr{netip.MustParseAddr("198.18.2.53")}
	if err := r.Apply(servers); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Apply(servers); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) {
		t.Error("an Apply with the same servers replaced the file")
	}
}

// TestWriteInPlace: the fallback for a file that cannot be renamed over
// leaves exactly the new bytes, shorter or longer than the old.
func TestWriteInPlace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	for _, s := range []string{"nameserver 198.18.2.53\nnameserver 198.18.2.54\n", "nameserver 198.18.2.55\n", "", "nameserver 2001:db8:2::53\nnameserver 2001:db8:2::54\n"} {
		if err := writeInPlace(path, []byte(s)); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(path); string(got) != s {
			t.Errorf("writeInPlace(%q) left %q", s, got)
		}
	}
}
