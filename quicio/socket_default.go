//go:build !linux

package quicio

import "errors"

func applySocketOptions(fd int, opts socketOptions) error {
	if opts.mark != 0 {
		return errors.New("socket marks are only supported on linux")
	}
	return nil
}
