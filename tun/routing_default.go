//go:build !linux

package tun

import (
	"errors"
	"fmt"
)

// Apply installs the policy routing that r describes. It is implemented
// only on Linux; elsewhere it returns an error that wraps
// [errors.ErrUnsupported].
func (r *Routing) Apply() error {
	return fmt.Errorf("apply routing: %w", errors.ErrUnsupported)
}

// Remove deletes what Apply installs. It is implemented only on Linux;
// elsewhere it returns an error that wraps [errors.ErrUnsupported].
func (r *Routing) Remove() error {
	return fmt.Errorf("remove routing: %w", errors.ErrUnsupported)
}

func (r *Routing) installed() (rules, routes int, err error) {
	return 0, 0, fmt.Errorf("list rules: %w", errors.ErrUnsupported)
}

// Replace is implemented only on Linux.
func (r *Routing) Replace(old *Routing) error {
	return fmt.Errorf("replace routing: %w", errors.ErrUnsupported)
}
