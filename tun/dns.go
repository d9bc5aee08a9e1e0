package tun

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// ManagedResolvConf is the resolver configuration that masque up rewrites
// and the only one a [State] may name for [Undo] to restore. Tests point
// it at a file of their own; nothing else changes it.
var ManagedResolvConf = "/etc/resolv.conf"

// ResolvConfBackup is the name, in the state directory, of the copy of
// ManagedResolvConf's original bytes.
const ResolvConfBackup = "resolv.conf.orig"

// ResolvConf is the resolver configuration a client changed: Path (usually
// /etc/resolv.conf) was rewritten after its original bytes were saved to
// Backup, from which Undo puts them back byte for byte.
type ResolvConf struct {
	Path   string `json:"path"`
	Backup string `json:"backup"`
}

func (r *ResolvConf) validate() error {
	if !strings.HasPrefix(r.Path, "/") || !strings.HasPrefix(r.Backup, "/") || r.Path == r.Backup {
		return fmt.Errorf("resolv_conf: want two different absolute paths, have %q and %q", r.Path, r.Backup)
	}
	return nil
}

// validateOwn checks that r names what masque up changes: Path is
// ManagedResolvConf and Backup a clean path named ResolvConfBackup.
func (r *ResolvConf) validateOwn() error {
	if r.Path != ManagedResolvConf {
		return fmt.Errorf("resolv_conf: path %q is not %s, which masque manages", r.Path, ManagedResolvConf)
	}
	if filepath.Clean(r.Backup) != r.Backup || filepath.Base(r.Backup) != ResolvConfBackup {
		return fmt.Errorf("resolv_conf: backup %q is not a clean path named %s", r.Backup, ResolvConfBackup)
	}
	return nil
}

// Apply points the resolver at servers: it saves Path's bytes to Backup
// (unless Backup exists: a second Apply, say after a reconnect, keeps the
// true original) and replaces Path's content (replaceFile: no reader ever
// sees it empty or partial), unless it already says the same. A Path that
// is a symbolic link is refused: it belongs to a resolver daemon
// (systemd-resolved), not to us.
func (r *ResolvConf) Apply(servers []netip.Addr) error {
	if err := r.validate(); err != nil {
		return err
	}
	if len(servers) == 0 {
		return errors.New("resolv.conf: no servers")
	}
	if fi, err := os.Lstat(r.Path); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("resolv.conf: %s is a symbolic link, managed by a resolver daemon: not changed", r.Path)
	}
	if _, err := os.Stat(r.Backup); errors.Is(err, fs.ErrNotExist) {
		orig, err := os.ReadFile(r.Path)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("resolv.conf: %w", err)
		}
		if err := writeFileAtomic(r.Backup, orig); err != nil {
			return fmt.Errorf("resolv.conf: save %s: %w", r.Backup, err)
		}
	}
	var b strings.Builder
	b.WriteString("# written by masque up while the tunnel is up; the original is restored when it goes down\n")
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s.WithZone(""))
	}
	if cur, err := os.ReadFile(r.Path); err == nil && string(cur) == b.String() {
		return nil
	}
	if err := replaceFile(r.Path, []byte(b.String())); err != nil {
		return fmt.Errorf("resolv.conf: %w", err)
	}
	return nil
}

// Restore writes Backup's bytes back to Path (replaceFile) and removes
// Backup. Without a Backup there is nothing to restore and it is no
// error. The Backup is opened without following a symbolic link and must
// be a regular file of the effective user's, not writable by group or
// others (else the error wraps [ErrUntrustedState] and Path is not
// touched).
func (r *ResolvConf) Restore() error {
	if err := r.validate(); err != nil {
		return err
	}
	f, err := openTrusted("resolv.conf backup", r.Backup)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("resolv.conf: %w", err)
	}
	orig, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("resolv.conf: %w", err)
	}
	if err := replaceFile(r.Path, orig); err != nil {
		return fmt.Errorf("resolv.conf: restore %s: %w", r.Path, err)
	}
	if err := os.Remove(r.Backup); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("resolv.conf: %w", err)
	}
	return nil
}

// replaceFile replaces the content of path, a world-readable file such as
// resolv.conf, with b, so that a reader sees the old content or the new,
// never an empty or partial file (a resolver that read an empty
// resolv.conf would fall back to 127.0.0.1): b goes into a temporary file
// in the same directory, which is renamed over path. A path that is a
// mount point cannot be renamed over (EBUSY): "ip netns exec" and
// container runtimes bind-mount a resolv.conf of their own over
// /etc/resolv.conf. There b is written in place by writeInPlace.
func replaceFile(path string, b []byte) error {
	tmp, err := writeTemp(filepath.Dir(path), "."+filepath.Base(path)+".masque*", 0o644, b)
	if err != nil {
		return writeInPlace(path, b)
	}
	err = os.Rename(tmp, path)
	if err != nil {
		os.Remove(tmp)
	}
	if errors.Is(err, syscall.EBUSY) {
		return writeInPlace(path, b)
	}
	return err
}

// writeInPlace writes b over path's content in one write at offset 0,
// padded with newlines to the old length, and then truncates to b's
// length: the file never shrinks before the new content is in, so no
// reader sees it empty or cut short (blank lines mean nothing to a
// resolver). It is the fallback of replaceFile for a file that cannot be
// renamed over.
func writeInPlace(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	buf := b
	if old := fi.Size(); old > int64(len(b)) {
		buf = append(slices.Clone(b), bytes.Repeat([]byte{'\n'}, int(old)-len(b))...)
	}
	if _, err := f.WriteAt(buf, 0); err != nil {
		return err
	}
	if err := f.Truncate(int64(len(b))); err != nil {
		return err
	}
	return f.Sync()
}
