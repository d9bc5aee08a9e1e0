// Package resolvedtest gives tests a private D-Bus system bus and, on it, a
// fake systemd-resolved that records the per-link DNS calls it receives
// (org.freedesktop.resolve1(5)), so that code which configures DNS through
// systemd-resolved can be tested on hosts that do not run it.
//
// The bus is a dbus-daemon child process (package dbus on Debian and
// Ubuntu); a test fails, not skips, when it is missing. [StartBus] points
// DBUS_SYSTEM_BUS_ADDRESS at the bus with t.Setenv, so tests that use it
// cannot run in parallel, and nothing they do reaches the host's bus.
package resolvedtest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// The names systemd-resolved serves on the system bus.
const (
	Name      = "org.freedesktop.resolve1"
	Path      = "/org/freedesktop/resolve1"
	Interface = "org.freedesktop.resolve1.Manager"
	// NoSuchLink is the error that resolved answers for an interface
	// index it does not know (yet, or any more).
	NoSuchLink = "org.freedesktop.resolve1.NoSuchLink"
)

// Addr is one element of SetLinkDNS's a(iay): an address family
// (AF_INET 2, AF_INET6 10) and the address's 4 or 16 bytes.
type Addr struct {
	Family  int32
	Address []byte
}

// Domain is one element of SetLinkDomains's a(sb): a domain and whether
// it is only a routing domain (not a search domain).
type Domain struct {
	Name        string
	RoutingOnly bool
}

// Call is one method call the fake answered.
type Call struct {
	// Method is the Manager method: SetLinkDNS, SetLinkDomains,
	// SetLinkDefaultRoute or RevertLink.
	Method  string
	Ifindex int32
	// Arg is the call's second argument: []Addr for SetLinkDNS, []Domain
	// for SetLinkDomains, bool for SetLinkDefaultRoute, nil for
	// RevertLink.
	Arg any
}

// busConfig is a system bus that lets every local user own any name and
// call any method: the test owns the whole bus.
const busConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`

// StartBus starts a private system bus for the test, stops it when the
// test ends and sets DBUS_SYSTEM_BUS_ADDRESS to its address for the
// test's duration. It returns the address.
func StartBus(t testing.TB) string {
	t.Helper()
	// A socket path must fit in sun_path (108 bytes), which t.TempDir's
	// test-named paths need not.
	dir, err := os.MkdirTemp("", "resolvedtest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, busConfig, filepath.Join(dir, "bus")), 0o644); err != nil {
		t.Fatal(err)
	}
	bin, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Fatalf("dbus-daemon not found (install package dbus): %v", err)
	}
	cmd := exec.Command(bin, "--config-file="+cfg, "--print-address", "--nofork")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dbus-daemon: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	var addr string
	select {
	case addr = <-line:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-line
	}
	if addr == "" {
		t.Fatalf("dbus-daemon printed no address; stderr:\n%s", stderr.String())
	}
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", addr)
	return addr
}

// Resolved is a fake systemd-resolved on a private system bus. It answers
// the Manager methods that configure a link and records each call; it
// resolves nothing.
type Resolved struct {
	mu      sync.Mutex // guards the fields below
	calls   []Call
	unknown map[int32]int
	onCall  func(Call)
}

// Start starts a bus with [StartBus] and serves a fake resolved on it
// under [Name] until the test ends.
func Start(t testing.TB) *Resolved {
	t.Helper()
	addr := StartBus(t)
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatalf("connect to the test bus: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	r := &Resolved{unknown: make(map[int32]int)}
	if err := conn.Export(manager{r}, Path, Interface); err != nil {
		t.Fatal(err)
	}
	reply, err := conn.RequestName(Name, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName(%s) = %v, %v", Name, reply, err)
	}
	return r
}

// Calls returns the calls answered so far, oldest first.
func (r *Resolved) Calls() []Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Call(nil), r.calls...)
}

// Reset forgets the calls answered so far.
func (r *Resolved) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = nil
}

// Unknown makes the fake answer the next n calls about ifindex with
// [NoSuchLink], as resolved does before it has seen a new link; such
// calls are not recorded.
func (r *Resolved) Unknown(ifindex int32, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unknown[ifindex] = n
}

// OnCall makes the fake run f with each call before answering it (say,
// to look at a state file as it is at that moment). f runs on the bus's
// goroutines, so it must not call t.Fatal.
func (r *Resolved) OnCall(f func(Call)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.onCall = f
}

func (r *Resolved) record(c Call) *dbus.Error {
	r.mu.Lock()
	if n := r.unknown[c.Ifindex]; n > 0 {
		r.unknown[c.Ifindex] = n - 1
		r.mu.Unlock()
		return dbus.NewError(NoSuchLink, []any{fmt.Sprintf("link %d not known", c.Ifindex)})
	}
	r.calls = append(r.calls, c)
	f := r.onCall
	r.mu.Unlock()
	if f != nil {
		f(c)
	}
	return nil
}

// manager holds the exported methods, so that Resolved's own methods
// are not exported on the bus.
type manager struct{ r *Resolved }

func (m manager) SetLinkDNS(ifindex int32, addrs []Addr) *dbus.Error {
	return m.r.record(Call{"SetLinkDNS", ifindex, addrs})
}

func (m manager) SetLinkDomains(ifindex int32, domains []Domain) *dbus.Error {
	return m.r.record(Call{"SetLinkDomains", ifindex, domains})
}

func (m manager) SetLinkDefaultRoute(ifindex int32, enable bool) *dbus.Error {
	return m.r.record(Call{"SetLinkDefaultRoute", ifindex, enable})
}

func (m manager) RevertLink(ifindex int32) *dbus.Error {
	return m.r.record(Call{"RevertLink", ifindex, nil})
}
