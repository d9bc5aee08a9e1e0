package tun

import (
	"errors"
	"fmt"
)

// ErrUntrustedState is matched (with errors.Is) by the error that
// [ReadState] and [WriteState] return when the state directory or file
// could have been written by someone other than the user masque runs as
// (root): a state file steers a root-run undo, so a file that another
// user could plant or change is refused before a byte of it is read.
var ErrUntrustedState = errors.New("untrusted state")

// untrustedError says which path failed the trust check and why, in one
// line: "state directory /run/masque: writable by group or others (mode
// 0777)".
type untrustedError struct {
	what    string // "state directory", "state file", "parent directory"
	path    string
	problem string
}

func (e *untrustedError) Error() string {
	return fmt.Sprintf("%s %s: %s", e.what, e.path, e.problem)
}

func (e *untrustedError) Is(target error) bool { return target == ErrUntrustedState }

func untrusted(what, path, format string, args ...any) error {
	return &untrustedError{what: what, path: path, problem: fmt.Sprintf(format, args...)}
}
