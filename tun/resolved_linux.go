package tun

import (
	"errors"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
)

// errNoLink is returned by linkName for an index that names no link.
var errNoLink = errors.New("no such link")

// linkIndex returns the index of the link called name.
func linkIndex(name string) (int, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("look up link %s: %w", name, err)
	}
	return link.Attrs().Index, nil
}

// linkName returns the name of the link with index i, or errNoLink.
func linkName(i int) (string, error) {
	link, err := netlink.LinkByIndex(i)
	if err != nil {
		if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok {
			return "", errNoLink
		}
		return "", fmt.Errorf("look up link %d: %w", i, err)
	}
	return link.Attrs().Name, nil
}

// sameNetNS reports whether process pid is in the calling thread's
// network namespace.
func sameNetNS(pid int) (bool, error) {
	theirs, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return false, fmt.Errorf("network namespace of pid %d: %w", pid, err)
	}
	ours, err := os.Stat("/proc/thread-self/ns/net")
	if err != nil {
		return false, fmt.Errorf("network namespace: %w", err)
	}
	return os.SameFile(theirs, ours), nil
}
