package tun

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/masque-vpn/masque/tun/internal/nstest"
	"github.com/vishvananda/netlink"
)

// TestUndo sets a host up as a daemon would, writing the state before
// each change, then "crashes" (closes nothing) and checks that Undo of
// the state read back from disk removes everything.
func TestUndo(t *testing.T) {
	nstest.New(t)
	path := filepath.Join(t.TempDir(), "state.json")
	const tunName, table = "mqtest0", DefaultNATTable
	r := &Routing{
		Link:     tunName,
		Routes:   []netip.Prefix{v4Default, v6Default},
		Excludes: []netip.Prefix{netip.MustParsePrefix("198.18.5.0/24")},
	}
	s := &State{Tun: tunName, Routing: r, NFTables: []string{table, DefaultGatewayTable}, Sysctls: map[string]string{}}
	write := func() {
		t.Helper()
		if err := WriteState(path, s); err != nil {
			t.Fatal(err)
		}
	}

	write()
	d, err := Create(Config{Name: tunName, Addrs: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/16")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := r.Apply(); err != nil {
		t.Fatal(err)
	}
	// The sysctl's old value is only known once it is set, so the daemon
	// records the value it is about to overwrite first.
	for _, key := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv6/conf/" + tunName + "/accept_ra"} {
		b, err := os.ReadFile("/proc/sys/" + key)
		if err != nil {
			t.Fatal(err)
		}
		s.Sysctls[key] = strings.TrimSpace(string(b))
		write()
		if _, err := SetSysctl(key, map[bool]string{true: "0", false: "1"}[strings.HasSuffix(key, "accept_ra")]); err != nil {
			t.Fatal(err)
		}
	}
	n, err := NewNAT(table, "", tunName, []netip.Prefix{netip.MustParsePrefix("100.64.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	g, err := NewGateway(DefaultGatewayTable, tunName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })

	got, err := ReadState(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // Undo again finds everything gone.
		if err := Undo(got); err != nil {
			t.Fatalf("Undo() #%d = %v", i+1, err)
		}
		if _, err := netlink.LinkByName(tunName); !isLinkNotFound(err) {
			t.Errorf("after Undo #%d: LinkByName(%s) = %v, want not found", i+1, tunName, err)
		}
		if rules, routes := routingState(t, r); len(rules) != 0 || len(routes) != 0 {
			t.Errorf("after Undo #%d: rules %q, routes %q, want none", i+1, rules, routes)
		}
		for _, table := range s.NFTables {
			if ok, err := TableExists(table); err != nil || ok {
				t.Errorf("after Undo #%d: TableExists(%s) = %v, %v, want false", i+1, table, ok, err)
			}
		}
		for _, key := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
			b, err := os.ReadFile("/proc/sys/" + key)
			if err != nil {
				t.Fatal(err)
			}
			if v := strings.TrimSpace(string(b)); v != s.Sysctls[key] {
				t.Errorf("after Undo #%d: %s = %s, want %s", i+1, key, v, s.Sysctls[key])
			}
		}
	}
	if err := RemoveState(path); err != nil {
		t.Fatal(err)
	}
}

func TestUndoLeavesForeignLink(t *testing.T) {
	nstest.New(t)
	err := Undo(&State{Version: StateVersion, Tun: "lo"})
	if err == nil || !strings.Contains(err.Error(), "delete link lo: is a device link, not tun") {
		t.Errorf("Undo(tun lo) = %v, want refusal", err)
	}
	if _, err := netlink.LinkByName("lo"); err != nil {
		t.Errorf("lo is gone: %v", err)
	}
}

func TestUndoNothing(t *testing.T) {
	nstest.New(t)
	if err := Undo(&State{Version: StateVersion}); err != nil {
		t.Errorf("Undo(empty) = %v", err)
	}
}

// TestUndoLeavesForeignLinkSysctls checks that a state naming a link
// that is not a TUN (lo) as its TUN cannot have that link's sysctls
// changed.
func TestUndoLeavesForeignLinkSysctls(t *testing.T) {
	nstest.New(t)
	const key = "net/ipv6/conf/lo/disable_ipv6"
	before, err := os.ReadFile("/proc/sys/" + key)
	if err != nil {
		t.Skipf("no %s: %v", key, err)
	}
	want := map[string]string{"0\n": "1", "1\n": "0"}[string(before)]
	err = Undo(&State{Version: StateVersion, Tun: "lo", Sysctls: map[string]string{key: want}})
	if err == nil || !strings.Contains(err.Error(), "restore sysctl "+key+": lo is a device link, not tun: left alone") {
		t.Errorf("Undo(sysctl of lo) = %v, want refusal", err)
	}
	if after, _ := os.ReadFile("/proc/sys/" + key); string(after) != string(before) {
		t.Errorf("%s = %q after Undo, was %q", key, after, before)
	}
}
