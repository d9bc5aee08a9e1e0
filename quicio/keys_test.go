package quicio

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestLoadOrCreateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "sub")
	k1, err := loadOrCreateKey(dir, resetKeyFile)
	if err != nil {
		t.Fatalf("loadOrCreateKey (create) = %v", err)
	}
	if *k1 == [32]byte{} {
		t.Error("created key is all zero")
	}
	fi, err := os.Stat(filepath.Join(dir, resetKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode = %#o, want 0600", perm)
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := di.Mode().Perm(); perm&0o077 != 0 {
		t.Errorf("state dir mode = %#o, want 0700", perm)
	}
	b, err := os.ReadFile(filepath.Join(dir, resetKeyFile))
	if err != nil || !bytes.Equal(b, k1[:]) {
		t.Errorf("key file holds %x (%v), want the key %x", b, err, k1[:])
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state dir holds %d entries, want only the key (no temporary file)", len(entries))
	}

	k2, err := loadOrCreateKey(dir, resetKeyFile)
	if err != nil {
		t.Fatalf("loadOrCreateKey (load) = %v", err)
	}
	if *k2 != *k1 {
		t.Error("second load returned another key")
	}
	k3, err := loadOrCreateKey(dir, tokenKeyFile)
	if err != nil {
		t.Fatalf("loadOrCreateKey (second name) = %v", err)
	}
	if *k3 == *k1 {
		t.Error("two key files got the same key")
	}
}

func TestLoadOrCreateKeyRejects(t *testing.T) {
	tests := []struct {
		name    string
		content []byte
		mode    os.FileMode
	}{
		{"short", make([]byte, 31), 0o600},
		{"long", make([]byte, 33), 0o600},
		{"empty", nil, 0o600},
		{"group readable", make([]byte, 32), 0o640},
		{"world readable", make([]byte, 32), 0o604},
		{"group writable", make([]byte, 32), 0o620},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, resetKeyFile)
			if err := os.WriteFile(path, tt.content, tt.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil { // umask
				t.Fatal(err)
			}
			if k, err := loadOrCreateKey(dir, resetKeyFile); err == nil {
				t.Fatalf("loadOrCreateKey(%d bytes, mode %#o) = %x, want error", len(tt.content), tt.mode, k[:])
			}
			// The bad file is left for the operator, not replaced.
			if b, _ := os.ReadFile(path); !bytes.Equal(b, tt.content) {
				t.Error("loadOrCreateKey replaced the bad key file")
			}
		})
	}
	t.Run("directory in the way", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dir, resetKeyFile), 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := loadOrCreateKey(dir, resetKeyFile); err == nil {
			t.Fatal("loadOrCreateKey with a directory as the key file: want error")
		}
	})
	t.Run("state dir is a file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadOrCreateKey(file, resetKeyFile); err == nil {
			t.Fatal("loadOrCreateKey under a regular file: want error")
		}
	})
}
