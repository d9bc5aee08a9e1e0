package tun

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
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
// true original) and rewrites Path in place, so that a bind-mounted file
// (ip netns exec, containers) works too. A Path that is a symbolic link is
// refused: it belongs to a resolver daemon (systemd-resolved), not to us.
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
	if err := os.WriteFile(r.Path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("resolv.conf: %w", err)
	}
	return nil
}

// Restore writes Backup's bytes back to Path, in place, and removes Backup.
// Without a Backup there is nothing to restore and it is no error. The
// Backup is opened without following a symbolic link and must be a
// regular file of the effective user's, not writable by group or others
// (else the error wraps [ErrUntrustedState] and Path is not touched).
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
	if err := os.WriteFile(r.Path, orig, 0o644); err != nil {
		return fmt.Errorf("resolv.conf: restore %s: %w", r.Path, err)
	}
	if err := os.Remove(r.Backup); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("resolv.conf: %w", err)
	}
	return nil
}
