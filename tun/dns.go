package tun

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strings"
)

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
// Without a Backup there is nothing to restore and it is no error.
func (r *ResolvConf) Restore() error {
	if err := r.validate(); err != nil {
		return err
	}
	orig, err := os.ReadFile(r.Backup)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
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
