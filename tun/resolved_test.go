package tun

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"
	"github.com/masque-vpn/masque/tun/internal/nstest"
	"github.com/masque-vpn/masque/tun/resolvedtest"
	"golang.org/x/sys/unix"
)

// loLink returns loopback as a ResolvedLink: a link every namespace has,
// so that Revert finds it, and whose settings only the fake resolved
// hears of.
func loLink(t *testing.T) *ResolvedLink {
	t.Helper()
	rl, err := NewResolvedLink("lo")
	if err != nil {
		t.Fatalf("NewResolvedLink(lo) = %v", err)
	}
	return rl
}

// wantApplied is what Apply sends resolved for a link: the servers, the
// routing-only domain "~." that routes every query to them and the
// default DNS route.
func wantApplied(ifindex int, addrs ...resolvedtest.Addr) []resolvedtest.Call {
	i := int32(ifindex)
	return []resolvedtest.Call{
		{Method: "SetLinkDNS", Ifindex: i, Arg: addrs},
		{Method: "SetLinkDomains", Ifindex: i, Arg: []resolvedtest.Domain{{Name: "~.", RoutingOnly: true}}},
		{Method: "SetLinkDefaultRoute", Ifindex: i, Arg: true},
	}
}

func TestResolvedApplyAndRevert(t *testing.T) {
	fake := resolvedtest.Start(t)
	rl := loLink(t)
	ctx := t.Context()

	servers := []netip.Addr{
		netip.MustParseAddr("198.18.2.53"),
		netip.MustParseAddr("2001:db8:2::53"),
		netip.MustParseAddr("::ffff:192.0.2.1"), // a mapped IPv4 server goes as IPv4
	}
	if err := rl.Apply(ctx, servers); err != nil {
		t.Fatalf("Apply = %v", err)
	}
	want := wantApplied(rl.Ifindex,
		resolvedtest.Addr{Family: 2, Address: []byte{198, 18, 2, 53}},
		resolvedtest.Addr{Family: 10, Address: []byte{0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x53}},
		resolvedtest.Addr{Family: 2, Address: []byte{192, 0, 2, 1}},
	)
	if diff := cmp.Diff(want, fake.Calls()); diff != "" {
		t.Errorf("calls after Apply (-want +got):\n%s", diff)
	}

	// A reconnect's servers replace the first ones the same way.
	fake.Reset()
	if err := rl.Apply(ctx, servers[1:2]); err != nil {
		t.Fatalf("second Apply = %v", err)
	}
	want = wantApplied(rl.Ifindex, resolvedtest.Addr{Family: 10, Address: servers[1].AsSlice()})
	if diff := cmp.Diff(want, fake.Calls()); diff != "" {
		t.Errorf("calls after a second Apply (-want +got):\n%s", diff)
	}

	fake.Reset()
	if err := rl.Revert(); err != nil {
		t.Fatalf("Revert = %v", err)
	}
	wantRevert := []resolvedtest.Call{{Method: "RevertLink", Ifindex: int32(rl.Ifindex)}}
	if diff := cmp.Diff(wantRevert, fake.Calls()); diff != "" {
		t.Errorf("calls after Revert (-want +got):\n%s", diff)
	}

	// After a crash: masque down reads the state file and undoes it. A
	// state names resolved settings of its own TUN only.
	d := createTestTUN(t)
	var err error
	if rl, err = NewResolvedLink(d.Name()); err != nil {
		t.Fatal(err)
	}
	wantRevert = []resolvedtest.Call{{Method: "RevertLink", Ifindex: int32(rl.Ifindex)}}
	fake.Reset()
	path := filepath.Join(t.TempDir(), "state.json")
	if err := WriteState(path, &State{Tun: d.Name(), Resolved: rl}); err != nil {
		t.Fatal(err)
	}
	st, err := ReadState(path)
	if err != nil {
		t.Fatalf("ReadState = %v", err)
	}
	if err := Undo(st); err != nil {
		t.Fatalf("Undo = %v", err)
	}
	if diff := cmp.Diff(wantRevert, fake.Calls()); diff != "" {
		t.Errorf("calls after Undo of a state file (-want +got):\n%s", diff)
	}

	if err := rl.Apply(ctx, nil); err == nil {
		t.Error("Apply(no servers) = nil error")
	}
}

// TestResolvedApplyWaitsForLink: right after the TUN is created resolved
// may not know the link yet; Apply retries, then gives up.
func TestResolvedApplyWaitsForLink(t *testing.T) {
	fake := resolvedtest.Start(t)
	rl := loLink(t)
	servers := []netip.Addr{netip.MustParseAddr("198.18.2.53")}
	fake.Unknown(int32(rl.Ifindex), 3)
	if err := rl.Apply(t.Context(), servers); err != nil {
		t.Fatalf("Apply while resolved learns of the link = %v", err)
	}
	want := wantApplied(rl.Ifindex, resolvedtest.Addr{Family: 2, Address: []byte{198, 18, 2, 53}})
	if diff := cmp.Diff(want, fake.Calls()); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}

	fake.Reset()
	fake.Unknown(int32(rl.Ifindex), 1<<30)
	defer func(d time.Duration) { resolvedLinkWait = d }(resolvedLinkWait)
	resolvedLinkWait = 300 * time.Millisecond
	err := rl.Apply(t.Context(), servers)
	if de, ok := errors.AsType[dbus.Error](err); !ok || de.Name != resolvedtest.NoSuchLink {
		t.Errorf("Apply for a link resolved never learns of = %v, want a %s error", err, resolvedtest.NoSuchLink)
	}
	if calls := fake.Calls(); len(calls) != 0 {
		t.Errorf("calls = %+v, want none", calls)
	}
}

func TestResolvedRevertLeavesOthersAlone(t *testing.T) {
	fake := resolvedtest.Start(t)
	lo := loLink(t)
	for _, rl := range []*ResolvedLink{
		{Link: "masque-gone", Ifindex: 1 << 30}, // deleted: resolved forgot it
		{Link: "masque0", Ifindex: lo.Ifindex},  // its index now names another link
	} {
		if err := rl.Revert(); err != nil {
			t.Errorf("Revert(%+v) = %v, want nil", rl, err)
		}
	}
	if calls := fake.Calls(); len(calls) != 0 {
		t.Errorf("calls = %+v, want none", calls)
	}
	// resolved does not know the link: nothing to revert.
	fake.Unknown(int32(lo.Ifindex), 1)
	if err := lo.Revert(); err != nil {
		t.Errorf("Revert of a link resolved does not know = %v, want nil", err)
	}
}

func TestResolvedRevertWithoutResolved(t *testing.T) {
	resolvedtest.StartBus(t)
	if err := loLink(t).Revert(); err != nil {
		t.Errorf("Revert with no resolved on the bus = %v, want nil", err)
	}
}

func TestResolvedValidate(t *testing.T) {
	for _, rl := range []*ResolvedLink{
		{Link: "", Ifindex: 3},
		{Link: "a/b", Ifindex: 3},
		{Link: "masque0", Ifindex: 0},
		{Link: "masque0", Ifindex: -1},
		{Link: "masque0", Ifindex: 1 << 31},
	} {
		if err := (&State{Version: StateVersion, Resolved: rl}).Validate(); err == nil {
			t.Errorf("State with Resolved %+v validates", rl)
		}
		if err := rl.Apply(t.Context(), []netip.Addr{netip.MustParseAddr("192.0.2.1")}); err == nil {
			t.Errorf("Apply on %+v = nil error", rl)
		}
		if err := rl.Revert(); err == nil {
			t.Errorf("Revert on %+v = nil error", rl)
		}
	}
}

// Files as systemd-resolved writes them, and one of another origin.
const (
	stubResolvConf   = "# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).\n# Do not edit.\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"
	uplinkResolvConf = "# This is /run/systemd/resolve/resolv.conf managed by man:systemd-resolved(8).\n# Do not edit.\nnameserver 192.0.2.53\n"
	bareStub         = "nameserver 127.0.0.53\n"
	ownResolvConf    = "# the host's own\nnameserver 192.0.2.53\nsearch example\n"
)

func TestDetectResolved(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	link := filepath.Join(dir, "link.conf")
	if err := os.Symlink(file("stub.conf", stubResolvConf), link); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		bus        func(t *testing.T) // sets up DBUS_SYSTEM_BUS_ADDRESS
		resolvConf string
		wantErr    string // "" means resolved manages DNS
	}{
		{"stub", startFake, file("stub", stubResolvConf), ""},
		{"uplink file", startFake, file("uplink", uplinkResolvConf), ""},
		{"bare stub", startFake, file("bare", bareStub), ""},
		{"link to the stub", startFake, link, ""},
		{"own file", startFake, file("own", ownResolvConf), "is not systemd-resolved's"},
		{"no file", startFake, filepath.Join(dir, "missing"), "is not systemd-resolved's"},
		{"not on the bus", startBus, file("stub2", stubResolvConf), "not on the system bus"},
		{"no bus", noBus, file("stub3", stubResolvConf), "system bus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.bus(t)
			err := DetectResolved(t.Context(), tt.resolvConf)
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("DetectResolved(%s) = %v, want nil", tt.resolvConf, err)
				}
				return
			}
			if !errors.Is(err, ErrNoResolved) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("DetectResolved(%s) = %v, want ErrNoResolved saying %q", tt.resolvConf, err, tt.wantErr)
			}
		})
	}

	// resolved serves the host's network namespace: from another one
	// (ip netns exec keeps the host's bus), its interface indexes would
	// name other links.
	t.Run("other network namespace", func(t *testing.T) {
		startFake(t)
		nstest.New(t)
		if unix.Gettid() == os.Getpid() {
			t.Fatal("test runs on the main thread, whose namespace stands for the fake resolved's (see TestMain)")
		}
		err := DetectResolved(t.Context(), file("stub4", stubResolvConf))
		if !errors.Is(err, ErrNoResolved) || !strings.Contains(err.Error(), "another network namespace") {
			t.Errorf("DetectResolved from another namespace = %v, want ErrNoResolved saying so", err)
		}
	})
}

func startFake(t *testing.T) { resolvedtest.Start(t) }
func startBus(t *testing.T)  { resolvedtest.StartBus(t) }
func noBus(t *testing.T) {
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(t.TempDir(), "no-bus"))
}

// TestDetectResolvedCancel: a bus that does not answer does not hold up
// the caller beyond its context.
func TestDetectResolvedCancel(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	// A listener that accepts and never speaks D-Bus.
	sock := filepath.Join(t.TempDir(), "mute")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+sock)
	start := time.Now()
	err = DetectResolved(ctx, "/nonexistent")
	if !errors.Is(err, ErrNoResolved) {
		t.Errorf("DetectResolved on a mute bus = %v, want ErrNoResolved", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("DetectResolved on a mute bus took %v", d)
	}
}
