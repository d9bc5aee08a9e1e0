//go:build unix

package tun

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// checkStateDir checks that dir may hold a state that root acts on, as
// checkTrustedDir describes.
func checkStateDir(dir string) error { return checkTrustedDir("state directory", dir) }

// checkTrustedDir checks that dir, a what ("state directory"), may hold
// files that root acts on: a real directory (lstat: not a symbolic link)
// owned by the effective user and not writable by group or others, whose
// every ancestor up to / is owned by root or the effective user and is
// not writable by group or others unless it has the sticky bit (as /tmp
// has), so that nobody else can move dir aside and put a directory of
// their own in its place. The ancestors are checked along dir's parent
// with its symbolic links resolved. A dir that does not exist gives an
// error that satisfies errors.Is(err, fs.ErrNotExist), unless a directory
// above it fails the check; one that fails the check, an error that wraps
// [ErrUntrustedState].
func checkTrustedDir(what, dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	fi, err := os.Lstat(abs)
	if errors.Is(err, fs.ErrNotExist) {
		// Refuse now, not once it is created, if it would be created
		// under a directory that others may write to.
		if perr := checkAncestors(what, dir, filepath.Dir(abs)); perr != nil && !errors.Is(perr, fs.ErrNotExist) {
			return perr
		}
		return err
	}
	if err != nil {
		return err
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return untrusted(what, dir, "a symbolic link (give the directory it points to)")
	case !fi.IsDir():
		return untrusted(what, dir, "not a directory")
	}
	if err := checkOwnerMode(what, dir, fi, false); err != nil {
		return err
	}
	return checkAncestors(what, dir, filepath.Dir(abs))
}

// checkAncestors checks parent, the parent of dir (a what), with its
// symbolic links resolved, and each directory above it, as
// checkTrustedDir describes. A parent that does not exist is skipped up
// to the first one that does.
func checkAncestors(what, dir, parent string) error {
	resolved, err := filepath.EvalSymlinks(parent)
	for errors.Is(err, fs.ErrNotExist) && parent != filepath.Dir(parent) {
		parent = filepath.Dir(parent)
		resolved, err = filepath.EvalSymlinks(parent)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	for p := resolved; ; p = filepath.Dir(p) {
		fi, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("%s %s: %w", what, dir, err)
		}
		if err := checkOwnerMode(what+"'s parent", p, fi, true); err != nil {
			return err
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// checkOwnerMode checks fi, the status of path: owned by the effective
// user (parent: by root or the effective user) and not writable by group
// or others (parent: unless sticky).
func checkOwnerMode(what, path string, fi fs.FileInfo, parent bool) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return untrusted(what, path, "owner unknown")
	}
	euid := os.Geteuid()
	switch uid := int(st.Uid); {
	case parent && uid != 0 && uid != euid:
		return untrusted(what, path, "owned by uid %d, not root", uid)
	case !parent && uid != euid:
		return untrusted(what, path, "owned by uid %d, not uid %d (the user masque runs as)", uid, euid)
	}
	if m := fi.Mode(); m.Perm()&0o022 != 0 && !(parent && m&fs.ModeSticky != 0) {
		return untrusted(what, path, "writable by group or others (mode %04o)", m.Perm())
	}
	return nil
}

// openTrusted opens path for reading without following a symbolic link
// (O_NOFOLLOW) and checks the opened file (fstat): a regular file with
// one link, owned by the effective user, not writable by group or others.
// A missing file gives an error that satisfies errors.Is(err,
// fs.ErrNotExist); an untrusted one, an error that wraps
// [ErrUntrustedState].
func openTrusted(what, path string) (*os.File, error) {
	// O_NONBLOCK: a FIFO planted in place of the file must not block the
	// open; the fstat below refuses it.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, untrusted(what, path, "a symbolic link")
	}
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if err := checkTrustedFile(what, path, fi); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func checkTrustedFile(what, path string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return untrusted(what, path, "not a regular file (%v)", fi.Mode().Type())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink != 1 {
		return untrusted(what, path, "has %d hard links", st.Nlink)
	}
	return checkOwnerMode(what, path, fi, false)
}
