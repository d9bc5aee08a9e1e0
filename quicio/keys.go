package quicio

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

const (
	resetKeyFile = "stateless-reset.key"
	tokenKeyFile = "token.key"
)

// loadOrCreateKey returns the 32-byte key stored in dir/name, creating it
// (mode 0600, directory 0700) if it does not exist. A persisted stateless
// reset key lets a restarted server reset its old connections at once
// (RFC 9000 §10.3) instead of leaving clients to time out.
func loadOrCreateKey(dir, name string) (*[32]byte, error) {
	path := filepath.Join(dir, name)
	var key [32]byte
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if len(b) != len(key) {
			return nil, fmt.Errorf("key file %s: want %d bytes, have %d", path, len(key), len(b))
		}
		fi, err := os.Stat(path)
		if err != nil {
			return nil, err
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("key file %s: mode %#o is readable by others, want 0600", path, fi.Mode().Perm())
		}
		copy(key[:], b)
		return &key, nil
	case errors.Is(err, fs.ErrNotExist):
	default:
		return nil, fmt.Errorf("read key file: %w", err)
	}
	if _, err := rand.Read(key[:]); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	tmp, err := os.CreateTemp(dir, name+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("write key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return nil, err
	}
	if _, err := tmp.Write(key[:]); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("write key file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, fmt.Errorf("write key file: %w", err)
	}
	return &key, nil
}
