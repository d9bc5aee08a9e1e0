//go:build !linux

package tun

import (
	"errors"
	"fmt"
)

var errNoLink = errors.New("no such link")

func linkIndex(name string) (int, error) {
	return 0, fmt.Errorf("look up link %s: %w", name, errors.ErrUnsupported)
}

func linkName(i int) (string, error) {
	return "", fmt.Errorf("look up link %d: %w", i, errors.ErrUnsupported)
}

func sameNetNS(int) (bool, error) {
	return false, fmt.Errorf("network namespaces: %w", errors.ErrUnsupported)
}
