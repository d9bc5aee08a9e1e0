//go:build !linux

package tun

import (
	"errors"
	"fmt"
)

// ClaimSlot claims a slot for an instance. It is implemented only on
// Linux; elsewhere it returns an error that wraps [errors.ErrUnsupported].
func ClaimSlot(dir string, c Claim) (Claim, error) {
	return Claim{}, fmt.Errorf("claim a slot: %w", errors.ErrUnsupported)
}

// Claims returns the claims of the network namespace. It is implemented
// only on Linux; elsewhere it returns an error that wraps
// [errors.ErrUnsupported].
func Claims(dir string) ([]Claim, error) {
	return nil, fmt.Errorf("list claims: %w", errors.ErrUnsupported)
}

// ReleaseClaim removes a claim. It is implemented only on Linux;
// elsewhere it returns an error that wraps [errors.ErrUnsupported].
func ReleaseClaim(dir string, s Slot) error {
	return fmt.Errorf("release slot %d: %w", s, errors.ErrUnsupported)
}

// checkStateClaim refuses a state with a claim, as the registry is
// implemented only on Linux.
func checkStateClaim(s *State) (release func() error, err error) {
	if s.Claim != "" {
		return nil, fmt.Errorf("check claim: %w", errors.ErrUnsupported)
	}
	return func() error { return nil }, nil
}

// ClaimPath is implemented only on Linux.
func ClaimPath(dir string, s Slot) (string, error) {
	return "", fmt.Errorf("claim path: %w", errors.ErrUnsupported)
}
