package tun

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"
)

// systemd-resolved's D-Bus API, org.freedesktop.resolve1(5).
const (
	resolvedName      = "org.freedesktop.resolve1"
	resolvedPath      = "/org/freedesktop/resolve1"
	resolvedManager   = "org.freedesktop.resolve1.Manager"
	resolvedNoSuchLnk = "org.freedesktop.resolve1.NoSuchLink"
)

// Address families as resolved takes them in SetLinkDNS: Linux's values,
// whatever the platform this is built for.
const (
	afInet  = 2
	afInet6 = 10
)

// ErrNoResolved is wrapped by the error of [DetectResolved] when
// systemd-resolved does not manage this host's DNS.
var ErrNoResolved = errors.New("systemd-resolved does not manage DNS here")

// resolvedLinkWait bounds how long Apply waits for resolved to learn of a
// link that was just created: it follows links through rtnetlink, and a
// call about a link it has not seen yet fails with NoSuchLink. Tests
// shorten it.
var resolvedLinkWait = 5 * time.Second

// resolvedRevertTimeout bounds Revert, which has no context: it runs on
// the way out, when a stuck bus must not keep the process.
const resolvedRevertTimeout = 10 * time.Second

// ResolvedLink is a link whose DNS settings a client handed to
// systemd-resolved: resolved sends every query to the link's servers
// while they are set, and forgets them when RevertLink is called or the
// link is deleted. Link is recorded beside Ifindex so that an index that
// names another link by the time of Revert is left alone.
type ResolvedLink struct {
	Link    string `json:"link"`
	Ifindex int    `json:"ifindex"`
}

func (r *ResolvedLink) validate() error {
	var errs []error
	if err := validateLinkName(r.Link, false); err != nil {
		errs = append(errs, fmt.Errorf("resolved: link: %w", err))
	}
	if r.Ifindex <= 0 || r.Ifindex > math.MaxInt32 {
		errs = append(errs, fmt.Errorf("resolved: ifindex %d out of range", r.Ifindex))
	}
	return errors.Join(errs...)
}

// NewResolvedLink returns the ResolvedLink for the link named link in the
// calling thread's network namespace.
func NewResolvedLink(link string) (*ResolvedLink, error) {
	if err := validateLinkName(link, false); err != nil {
		return nil, fmt.Errorf("resolved: %w", err)
	}
	i, err := linkIndex(link)
	if err != nil {
		return nil, fmt.Errorf("resolved: %w", err)
	}
	return &ResolvedLink{Link: link, Ifindex: i}, nil
}

// resolvedAddr and resolvedDomain are the elements of SetLinkDNS's
// a(iay) and SetLinkDomains's a(sb).
type resolvedAddr struct {
	Family  int32
	Address []byte
}

type resolvedDomain struct {
	Domain      string
	RoutingOnly bool
}

// Apply hands servers to systemd-resolved as the link's DNS servers, makes
// the link the route for every domain (the routing-only domain "~.") and
// its default DNS route, so that resolved sends all queries to servers. A
// second Apply (a reconnect's new servers) replaces the first. While
// resolved has not yet seen the link, Apply retries for a few seconds.
func (r *ResolvedLink) Apply(ctx context.Context, servers []netip.Addr) error {
	if err := r.validate(); err != nil {
		return err
	}
	if len(servers) == 0 {
		return errors.New("resolved: no servers")
	}
	addrs := make([]resolvedAddr, len(servers))
	for i, s := range servers {
		s = s.Unmap()
		if s.Is4() {
			addrs[i] = resolvedAddr{afInet, s.AsSlice()}
		} else {
			addrs[i] = resolvedAddr{afInet6, s.AsSlice()}
		}
	}
	conn, err := dbus.ConnectSystemBus(dbus.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("resolved: system bus: %w", err)
	}
	defer conn.Close()
	obj := conn.Object(resolvedName, resolvedPath)
	ifindex := int32(r.Ifindex)
	wait, cancel := context.WithTimeout(ctx, resolvedLinkWait)
	defer cancel()
	for {
		err = obj.CallWithContext(ctx, resolvedManager+".SetLinkDNS", 0, ifindex, addrs).Err
		if !isDBusError(err, resolvedNoSuchLnk) {
			break
		}
		select {
		case <-wait.Done():
			return fmt.Errorf("resolved: SetLinkDNS %s (%d): %w", r.Link, r.Ifindex, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err != nil {
		return fmt.Errorf("resolved: SetLinkDNS %s (%d): %w", r.Link, r.Ifindex, err)
	}
	domains := []resolvedDomain{{"~.", true}}
	if err := obj.CallWithContext(ctx, resolvedManager+".SetLinkDomains", 0, ifindex, domains).Err; err != nil {
		return fmt.Errorf("resolved: SetLinkDomains %s (%d): %w", r.Link, r.Ifindex, err)
	}
	if err := obj.CallWithContext(ctx, resolvedManager+".SetLinkDefaultRoute", 0, ifindex, true).Err; err != nil {
		return fmt.Errorf("resolved: SetLinkDefaultRoute %s (%d): %w", r.Link, r.Ifindex, err)
	}
	return nil
}

// Revert tells systemd-resolved to drop the link's DNS settings
// (RevertLink). A link that is gone, or whose index now names another
// link, is no error and nothing is called: resolved forgot the settings
// when the link was deleted. Neither is a resolved that does not know the
// link or is not running.
func (r *ResolvedLink) Revert() error {
	if err := r.validate(); err != nil {
		return err
	}
	name, err := linkName(r.Ifindex)
	if errors.Is(err, errNoLink) || err == nil && name != r.Link {
		return nil
	}
	if err != nil {
		return fmt.Errorf("resolved: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), resolvedRevertTimeout)
	defer cancel()
	conn, err := dbus.ConnectSystemBus(dbus.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("resolved: system bus: %w", err)
	}
	defer conn.Close()
	err = conn.Object(resolvedName, resolvedPath).CallWithContext(ctx, resolvedManager+".RevertLink", 0, int32(r.Ifindex)).Err
	if err != nil && !isDBusError(err, resolvedNoSuchLnk, "org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner") {
		return fmt.Errorf("resolved: RevertLink %s (%d): %w", r.Link, r.Ifindex, err)
	}
	return nil
}

// DetectResolved returns nil when systemd-resolved manages the DNS of the
// calling thread's network namespace, and otherwise an error that wraps
// [ErrNoResolved] and says why. resolved manages DNS when it owns its name
// on the system bus, runs in this network namespace (interface indexes
// mean nothing in another: "ip netns exec" keeps the host's bus) and
// resolvConf (/etc/resolv.conf) is its own: a link into
// /run/systemd/resolve/, or a file that points at its stub listener
// 127.0.0.53 or names it in a comment. A resolv.conf of another origin
// is what the host's programs read, so that is what a client must change.
func DetectResolved(ctx context.Context, resolvConf string) error {
	conn, err := dbus.ConnectSystemBus(dbus.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("%w: system bus: %v", ErrNoResolved, err)
	}
	defer conn.Close()
	bus := conn.BusObject()
	var has bool
	if err := bus.CallWithContext(ctx, "org.freedesktop.DBus.NameHasOwner", 0, resolvedName).Store(&has); err != nil {
		return fmt.Errorf("%w: system bus: %v", ErrNoResolved, err)
	}
	if !has {
		return fmt.Errorf("%w: %s is not on the system bus", ErrNoResolved, resolvedName)
	}
	var pid uint32
	if err := bus.CallWithContext(ctx, "org.freedesktop.DBus.GetConnectionUnixProcessID", 0, resolvedName).Store(&pid); err != nil {
		return fmt.Errorf("%w: process of %s: %v", ErrNoResolved, resolvedName, err)
	}
	same, err := sameNetNS(int(pid))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoResolved, err)
	}
	if !same {
		return fmt.Errorf("%w: it runs in another network namespace (pid %d)", ErrNoResolved, pid)
	}
	if !resolvedOwns(resolvConf) {
		return fmt.Errorf("%w: %s is not systemd-resolved's", ErrNoResolved, resolvConf)
	}
	return nil
}

// resolvedOwns reports whether the resolv.conf at path sends programs to
// systemd-resolved, or is written by it.
func resolvedOwns(path string) bool {
	if target, err := filepath.EvalSymlinks(path); err == nil && strings.HasPrefix(target, "/run/systemd/resolve/") {
		return true
	}
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") {
			if strings.Contains(line, "systemd-resolved") {
				return true
			}
			continue
		}
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "nameserver" && (f[1] == "127.0.0.53" || f[1] == "127.0.0.54") {
			return true
		}
	}
	return false
}

// isDBusError reports whether err is a D-Bus error reply with one of the
// names.
func isDBusError(err error, names ...string) bool {
	var name string
	if de, ok := errors.AsType[dbus.Error](err); ok {
		name = de.Name
	} else if de, ok := errors.AsType[*dbus.Error](err); ok {
		name = de.Name
	} else {
		return false
	}
	return slices.Contains(names, name)
}
