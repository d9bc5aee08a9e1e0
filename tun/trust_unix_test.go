//go:build unix

package tun

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// nobody is the uid and gid the root-only cases chown to.
const nobody = 65534

// TestReadStateTrust plants state files and directories that someone
// other than the user running masque could have written, in a temporary
// directory, and checks that ReadState refuses each with
// ErrUntrustedState and a line naming the path and the problem.
func TestReadStateTrust(t *testing.T) {
	good := []byte(`{"version":1,"pid":7}`)
	tests := []struct {
		name string
		root bool // needs root (chown)
		// setup makes the state directory dir (below base, which is
		// trusted) and returns the state file's path.
		setup   func(t *testing.T, base string) string
		wantErr string // substring; "" means trusted
	}{
		{name: "trusted", setup: func(t *testing.T, base string) string {
			return writeState(t, mkdir(t, base, "s", 0o700), good, 0o600)
		}},
		{name: "file readable by others", setup: func(t *testing.T, base string) string {
			return writeState(t, mkdir(t, base, "s", 0o755), good, 0o644)
		}},
		{name: "directory writable by others", setup: func(t *testing.T, base string) string {
			return writeState(t, mkdir(t, base, "s", 0o777), good, 0o600)
		}, wantErr: "state directory <base>/s: writable by group or others (mode 0777)"},
		{name: "directory writable by group", setup: func(t *testing.T, base string) string {
			return writeState(t, mkdir(t, base, "s", 0o770), good, 0o600)
		}, wantErr: "writable by group or others (mode 0770)"},
		{name: "sticky directory writable by others", setup: func(t *testing.T, base string) string {
			d := mkdir(t, base, "s", 0o777)
			chmod(t, d, 0o777|fs.ModeSticky)
			return writeState(t, d, good, 0o600)
		}, wantErr: "writable by group or others"},
		{name: "file writable by others", setup: func(t *testing.T, base string) string {
			return writeState(t, mkdir(t, base, "s", 0o700), good, 0o666)
		}, wantErr: "state file <base>/s/state.json: writable by group or others (mode 0666)"},
		{name: "file writable by group", setup: func(t *testing.T, base string) string {
			return writeState(t, mkdir(t, base, "s", 0o700), good, 0o620)
		}, wantErr: "writable by group or others (mode 0620)"},
		{name: "directory is a symbolic link", setup: func(t *testing.T, base string) string {
			d := mkdir(t, base, "real", 0o700)
			writeState(t, d, good, 0o600)
			symlink(t, d, filepath.Join(base, "s"))
			return filepath.Join(base, "s", "state.json")
		}, wantErr: "state directory <base>/s: a symbolic link"},
		{name: "file is a symbolic link", setup: func(t *testing.T, base string) string {
			d := mkdir(t, base, "s", 0o700)
			target := writeState(t, mkdir(t, base, "other", 0o700), good, 0o600)
			symlink(t, target, filepath.Join(d, "state.json"))
			return filepath.Join(d, "state.json")
		}, wantErr: "state file <base>/s/state.json: a symbolic link"},
		{name: "file is a FIFO", setup: func(t *testing.T, base string) string {
			p := filepath.Join(mkdir(t, base, "s", 0o700), "state.json")
			if err := syscall.Mkfifo(p, 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}, wantErr: "not a regular file"},
		{name: "file is a directory", setup: func(t *testing.T, base string) string {
			return mkdir(t, mkdir(t, base, "s", 0o700), "state.json", 0o700)
		}, wantErr: "not a regular file"},
		{name: "file is a hard link", setup: func(t *testing.T, base string) string {
			d := mkdir(t, base, "s", 0o700)
			p := writeState(t, d, good, 0o600)
			if err := os.Link(p, filepath.Join(base, "elsewhere")); err != nil {
				t.Fatal(err)
			}
			return p
		}, wantErr: "has 2 hard links"},
		{name: "not a directory", setup: func(t *testing.T, base string) string {
			p := writeState(t, base, good, 0o600)
			return filepath.Join(p, "state.json")
		}, wantErr: "not a directory"},
		{name: "parent writable by others", setup: func(t *testing.T, base string) string {
			p := mkdir(t, base, "p", 0o777)
			return writeState(t, mkdir(t, p, "s", 0o700), good, 0o600)
		}, wantErr: "state directory's parent <base>/p: writable by group or others (mode 0777)"},
		{name: "sticky parent writable by others", setup: func(t *testing.T, base string) string {
			p := mkdir(t, base, "p", 0o777)
			chmod(t, p, 0o777|fs.ModeSticky)
			return writeState(t, mkdir(t, p, "s", 0o700), good, 0o600)
		}},
		{name: "parent through a symbolic link", setup: func(t *testing.T, base string) string {
			p := mkdir(t, base, "p", 0o755)
			symlink(t, p, filepath.Join(base, "plink"))
			writeState(t, mkdir(t, p, "s", 0o700), good, 0o600)
			return filepath.Join(base, "plink", "s", "state.json")
		}},
		{name: "parent linked to one writable by others", setup: func(t *testing.T, base string) string {
			p := mkdir(t, base, "p", 0o777)
			symlink(t, p, filepath.Join(base, "plink"))
			writeState(t, mkdir(t, p, "s", 0o700), good, 0o600)
			return filepath.Join(base, "plink", "s", "state.json")
		}, wantErr: "state directory's parent <base>/p: writable by group or others"},
		{name: "directory owned by nobody", root: true, setup: func(t *testing.T, base string) string {
			d := mkdir(t, base, "s", 0o700)
			p := writeState(t, d, good, 0o600)
			chown(t, d)
			return p
		}, wantErr: "state directory <base>/s: owned by uid 65534, not uid 0"},
		{name: "file owned by nobody", root: true, setup: func(t *testing.T, base string) string {
			p := writeState(t, mkdir(t, base, "s", 0o700), good, 0o600)
			chown(t, p)
			return p
		}, wantErr: "state file <base>/s/state.json: owned by uid 65534, not uid 0"},
		{name: "parent owned by nobody", root: true, setup: func(t *testing.T, base string) string {
			p := mkdir(t, base, "p", 0o755)
			s := writeState(t, mkdir(t, p, "s", 0o700), good, 0o600)
			chown(t, p)
			return s
		}, wantErr: "state directory's parent <base>/p: owned by uid 65534, not root"},
		{name: "file of nobody's, readable by all", root: true, setup: func(t *testing.T, base string) string {
			d := mkdir(t, base, "s", 0o755)
			p := writeState(t, d, good, 0o600)
			chown(t, p)
			return p
		}, wantErr: "owned by uid 65534"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root && os.Geteuid() != 0 {
				t.Skip("needs root to chown")
			}
			base := t.TempDir()
			path := tt.setup(t, base)
			st, err := ReadState(path)
			if tt.wantErr == "" {
				if err != nil || st.PID != 7 {
					t.Fatalf("ReadState(%s) = %+v, %v, want the state", path, st, err)
				}
				return
			}
			want := strings.ReplaceAll(tt.wantErr, "<base>", base)
			if !errors.Is(err, ErrUntrustedState) || !strings.Contains(err.Error(), want) {
				t.Fatalf("ReadState(%s) = %v, want ErrUntrustedState containing %q", path, err, want)
			}
			if errors.Is(err, ErrCorruptState) || errors.Is(err, fs.ErrNotExist) {
				t.Errorf("ReadState(%s) = %v, also corrupt or missing", path, err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("ReadState(%s) error has more than one line: %q", path, err)
			}
		})
	}
}

func TestReadStateMissing(t *testing.T) {
	base := t.TempDir()
	for _, p := range []string{filepath.Join(base, "none", "state.json"), filepath.Join(base, "state.json")} {
		if _, err := ReadState(p); !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrUntrustedState) {
			t.Errorf("ReadState(%s) = %v, want fs.ErrNotExist", p, err)
		}
	}
	// An untrusted directory is refused even when it holds no state, and
	// so is a missing one that would be created in one.
	d := mkdir(t, base, "open", 0o777)
	if _, err := ReadState(filepath.Join(d, "state.json")); !errors.Is(err, ErrUntrustedState) {
		t.Errorf("ReadState in a directory of mode 0777 = %v, want ErrUntrustedState", err)
	}
	p := filepath.Join(d, "new", "deeper", "state.json")
	if _, err := ReadState(p); !errors.Is(err, ErrUntrustedState) || !strings.Contains(err.Error(), "parent "+d+": writable by group or others") {
		t.Errorf("ReadState(%s) = %v, want ErrUntrustedState naming %s", p, err, d)
	}
}

func TestWriteStateTrust(t *testing.T) {
	base := t.TempDir()
	s := &State{Tun: "masque0"}

	// A new directory, parents included, is made 0700.
	path := filepath.Join(base, "a", "b", "state.json")
	if err := WriteState(path, s); err != nil {
		t.Fatalf("WriteState(new directory) = %v", err)
	}
	for _, d := range []string{filepath.Join(base, "a"), filepath.Join(base, "a", "b")} {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("mode of %s = %v, %v, want 0700", d, fi.Mode(), err)
		}
	}

	for _, tt := range []struct {
		name  string
		setup func(t *testing.T) string // returns the state directory
		want  string
	}{
		{"writable by others", func(t *testing.T) string { return mkdir(t, base, "open", 0o777) }, "writable by group or others (mode 0777)"},
		{"a symbolic link", func(t *testing.T) string {
			l := filepath.Join(base, "link")
			symlink(t, mkdir(t, base, "real", 0o700), l)
			return l
		}, "a symbolic link"},
		{"under a parent writable by others", func(t *testing.T) string {
			return filepath.Join(mkdir(t, base, "openparent", 0o777), "new")
		}, "writable by group or others (mode 0777)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := tt.setup(t)
			path := filepath.Join(dir, "state.json")
			err := WriteState(path, s)
			if !errors.Is(err, ErrUntrustedState) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("WriteState(%s) = %v, want ErrUntrustedState containing %q", path, err, tt.want)
			}
			if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("WriteState(%s) wrote the file: %v", path, err)
			}
			if tt.name == "under a parent writable by others" {
				if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("WriteState(%s) made the directory: %v", path, err)
				}
			}
		})
	}
}

func TestRestoreUntrustedBackup(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	orig := []byte("nameserver 192.0.2.53\n")
	if err := os.WriteFile(path, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("not for resolv.conf\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(dir, ResolvConfBackup)
	symlink(t, secret, backup)
	err := (&ResolvConf{Path: path, Backup: backup}).Restore()
	if !errors.Is(err, ErrUntrustedState) || !strings.Contains(err.Error(), "a symbolic link") {
		t.Errorf("Restore(backup is a symbolic link) = %v, want ErrUntrustedState", err)
	}
	if got, _ := os.ReadFile(path); string(got) != string(orig) {
		t.Errorf("resolv.conf = %q after a refused Restore, want %q", got, orig)
	}
}

func mkdir(t *testing.T, parent, name string, mode fs.FileMode) string {
	t.Helper()
	d := filepath.Join(parent, name)
	if err := os.Mkdir(d, mode); err != nil {
		t.Fatal(err)
	}
	chmod(t, d, mode) // past the umask
	return d
}

func chmod(t *testing.T, p string, mode fs.FileMode) {
	t.Helper()
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func chown(t *testing.T, p string) {
	t.Helper()
	if err := os.Lchown(p, nobody, nobody); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// writeState writes b to dir/state.json with mode and returns the path.
func writeState(t *testing.T, dir string, b []byte, mode fs.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, "state.json")
	if err := os.WriteFile(p, b, mode); err != nil {
		t.Fatal(err)
	}
	chmod(t, p, mode)
	return p
}
