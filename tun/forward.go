package tun

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
)

// sysctlRoot is where SetSysctl finds the sysctls.
const sysctlRoot = "/proc/sys/"

// SetSysctl writes value to /proc/sys/<key>, where key is slash-separated
// as in "net/ipv4/ip_forward" (the dotted form is ambiguous once an
// interface name holds a dot), and returns the previous value without its
// trailing newline, so that it can be passed back to restore it. The file
// is not written when it already holds value. The sysctls under net/ are
// per network namespace, those of the calling thread's.
func SetSysctl(key, value string) (old string, err error) {
	if err := validateSysctlKey(key); err != nil {
		return "", fmt.Errorf("set sysctl: %w", err)
	}
	old, err = sysctlValue(key)
	if err != nil {
		return "", fmt.Errorf("set sysctl %s: %w", key, err)
	}
	if old == value {
		return old, nil
	}
	f, err := os.OpenFile(sysctlRoot+key, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return "", fmt.Errorf("set sysctl %s: %w", key, err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("set sysctl %s=%q: %w", key, value, err)
	}
	return old, nil
}

// ReadSysctl returns the value of /proc/sys/<key>, key as [SetSysctl]
// takes it, without its trailing newline. A sysctl that does not exist
// gives an error that satisfies errors.Is(err, fs.ErrNotExist).
func ReadSysctl(key string) (string, error) {
	if err := validateSysctlKey(key); err != nil {
		return "", fmt.Errorf("read sysctl: %w", err)
	}
	v, err := sysctlValue(key)
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", key, err)
	}
	return v, nil
}

// sysctlValue reads the valid key.
func sysctlValue(key string) (string, error) {
	b, err := os.ReadFile(sysctlRoot + key)
	if err != nil {
		return "", err
	}
	return string(bytes.TrimSuffix(b, []byte("\n"))), nil
}

// validateSysctlKey rejects keys that would leave /proc/sys.
func validateSysctlKey(key string) error {
	switch {
	case key == "":
		return errors.New("empty sysctl key")
	case strings.HasPrefix(key, "/") || path.Clean(key) != key || key == "." ||
		key == ".." || strings.HasPrefix(key, "../"):
		return fmt.Errorf("invalid sysctl key %q", key)
	case strings.ContainsRune(key, 0):
		return fmt.Errorf("invalid sysctl key %q", key)
	}
	return nil
}
