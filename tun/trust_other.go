//go:build !unix

package tun

import "os"

// checkStateDir refuses every directory, as checkTrustedDir does.
func checkStateDir(dir string) error { return checkTrustedDir("state directory", dir) }

// checkTrustedDir refuses every directory: without owners and modes to
// check, no directory can be trusted.
func checkTrustedDir(what, dir string) error {
	if _, err := os.Lstat(dir); err != nil {
		return err
	}
	return untrusted(what, dir, "owner and mode cannot be checked on this platform")
}

// openTrusted refuses every file, as checkStateDir does.
func openTrusted(what, path string) (*os.File, error) {
	if _, err := os.Lstat(path); err != nil {
		return nil, err
	}
	return nil, untrusted(what, path, "owner and mode cannot be checked on this platform")
}
