package tun

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
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

// claimedState claims a slot for a crashed instance called name (a dead
// pid) after others live claims, leaves its kill switch table and rules
// behind, and returns the state that records them with its claim.
func claimedState(t *testing.T, dir, name string, others ...string) *State {
	t.Helper()
	for _, o := range others {
		claimAs(t, dir, o, os.Getpid())
	}
	pid := deadPID(t)
	c := claimAs(t, dir, name, pid)
	ns, err := netnsID()
	if err != nil {
		t.Fatal(err)
	}
	r := c.Slot.Routing()
	addRule(t, r.RulePriority, tableMain)
	addThrowRoute(t, r.Table)
	addNFTTable(t, c.Slot.KillSwitchTable())
	s := &State{Version: StateVersion, PID: pid, Slot: c.Slot, Routing: &r, NFTables: []string{c.Slot.KillSwitchTable()},
		Claim: filepath.Join(dir, claimFileName(ns, c.Slot))}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	return s
}

// slotLeftovers says whether slot s's kernel resources exist.
func slotLeftovers(t *testing.T, s Slot) bool {
	t.Helper()
	use, err := slotUsage()
	if err != nil {
		t.Fatal(err)
	}
	return use[s].leftovers
}

// TestUndoReleasesClaim checks that Undo of a crashed instance's state
// removes its slot's resources and then its claim, and nothing of the
// other instances'.
func TestUndoReleasesClaim(t *testing.T) {
	nstest.New(t)
	dir := testRegistry(t)
	s := claimedState(t, dir, "work", "a", "b")
	if s.Slot != 2 {
		t.Fatalf("crashed instance has slot %d, want 2", s.Slot)
	}
	other := Slot(1).Routing()
	addRule(t, other.RulePriority, tableMain)
	addNFTTable(t, Slot(1).KillSwitchTable())
	for i := range 2 {
		if err := Undo(s); err != nil {
			t.Fatalf("Undo() #%d = %v", i+1, err)
		}
		if slotLeftovers(t, s.Slot) {
			t.Errorf("after Undo #%d: slot %d's resources remain", i+1, s.Slot)
		}
		if _, err := os.Stat(s.Claim); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("after Undo #%d: claim %s: %v, want it removed", i+1, s.Claim, err)
		}
		if diff := cmp.Diff(map[string]Slot{"a": 0, "b": 1}, claimSlots(t, dir)); diff != "" {
			t.Errorf("after Undo #%d: claims (-want +got):\n%s", i+1, diff)
		}
		if !slotLeftovers(t, 1) {
			t.Errorf("after Undo #%d: slot 1's resources are gone", i+1)
		}
	}
}

// TestUndoKeepsClaim checks that Undo leaves a claim alone when it is
// not the state's process's, or when the undo failed.
func TestUndoKeepsClaim(t *testing.T) {
	t.Run("another dead process's", func(t *testing.T) {
		nstest.New(t)
		dir := testRegistry(t)
		s := claimedState(t, dir, "work")
		s.PID = deadPID(t)
		if err := Undo(s); err != nil {
			t.Fatalf("Undo() = %v", err)
		}
		if slotLeftovers(t, s.Slot) {
			t.Errorf("slot %d's resources remain", s.Slot)
		}
		if _, err := os.Stat(s.Claim); err != nil {
			t.Errorf("claim of another process: %v, want it kept", err)
		}
	})
	t.Run("failed undo", func(t *testing.T) {
		nstest.New(t)
		dir := testRegistry(t)
		s := claimedState(t, dir, "work")
		s.Tun = "lo"
		if err := Undo(s); err == nil || !strings.Contains(err.Error(), "is a device link, not tun") {
			t.Fatalf("Undo(tun lo) = %v, want a refusal", err)
		}
		if _, err := os.Stat(s.Claim); err != nil {
			t.Errorf("claim after a failed Undo: %v, want it kept", err)
		}
	})
}

// TestUndoRefusesTakenSlot checks that Undo of a stale state, whose slot
// a running instance holds now, touches nothing of that instance's.
func TestUndoRefusesTakenSlot(t *testing.T) {
	nstest.New(t)
	dir := testRegistry(t)
	s := claimedState(t, dir, "work")
	// The leftovers went (by hand, say), and another instance took the
	// slot and set it up.
	if err := errors.Join(s.Routing.Remove(), DeleteTable(s.Slot.KillSwitchTable())); err != nil {
		t.Fatal(err)
	}
	pid, _ := startMasque(t)
	if c := claimAs(t, dir, "home", pid); c.Slot != s.Slot {
		t.Fatalf("home took slot %d, want %d", c.Slot, s.Slot)
	}
	addRule(t, s.Slot.RulePriority(), tableMain)
	addNFTTable(t, s.Slot.KillSwitchTable())
	err := Undo(s)
	if !errors.Is(err, ErrSlotTaken) || !strings.Contains(err.Error(), `slot 0 is held by instance "home"`) {
		t.Fatalf("Undo(stale state) = %v, want ErrSlotTaken naming home", err)
	}
	if !slotLeftovers(t, s.Slot) {
		t.Errorf("Undo(stale state) removed slot %d's resources", s.Slot)
	}
	if cs, err := Claims(dir); err != nil || len(cs) != 1 || cs[0].PID != pid {
		t.Errorf("Claims() = %+v, %v, want home's", cs, err)
	}
}

// TestUndoAfterTakeover checks that a new run of a crashed instance,
// which has taken the crashed run's slot over, can undo that run's state
// and keeps its own claim.
func TestUndoAfterTakeover(t *testing.T) {
	nstest.New(t)
	dir := testRegistry(t)
	s := claimedState(t, dir, "work", "a")
	c, err := ClaimSlot(dir, testInstance("work"))
	if err != nil || c.Slot != s.Slot {
		t.Fatalf("ClaimSlot(work) = %+v, %v, want the crashed run's slot %d", c, err, s.Slot)
	}
	if err := Undo(s); err != nil {
		t.Fatalf("Undo(crashed run's state) = %v", err)
	}
	if slotLeftovers(t, s.Slot) {
		t.Errorf("slot %d's resources remain", s.Slot)
	}
	cs, err := Claims(dir)
	if err != nil || len(cs) != 2 || cs[1].Slot != s.Slot || cs[1].PID != os.Getpid() {
		t.Errorf("Claims() = %+v, %v, want a's and the new run's", cs, err)
	}
}
