package tun

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/masque-vpn/masque/tun/internal/nstest"
	"github.com/vishvananda/netns"
)

// testInstance is a split tunnel without a kill switch called name, held
// by the calling process.
func testInstance(name string) Claim {
	return Claim{Instance: name, StateDir: "/run/masque/" + name, Tun: "mq-" + name}
}

// testRegistry returns a registry directory that does not exist yet.
func testRegistry(t *testing.T) string { return filepath.Join(t.TempDir(), "instances") }

// deadPID returns the PID of a process that has exited and been reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.ProcessState.Pid()
}

// startMasque starts a process called masque (a copy of sleep), which
// processAlive takes for a running masque up, and returns its PID and a
// function that kills and reaps it.
func startMasque(t *testing.T) (pid int, kill func()) {
	t.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep")
	}
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "masque")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	kill = func() {
		cmd.Process.Kill()
		cmd.Wait()
	}
	t.Cleanup(kill)
	return cmd.Process.Pid, kill
}

// claimAs claims a slot for instance name held by pid, as a crashed or
// running masque up would have.
func claimAs(t *testing.T, dir, name string, pid int) Claim {
	t.Helper()
	c := testInstance(name)
	c.PID = pid
	got, err := ClaimSlot(dir, c)
	if err != nil {
		t.Fatalf("ClaimSlot(%s, pid %d) = %v", name, pid, err)
	}
	return got
}

// claimSlots returns the slot of each claim, by instance.
func claimSlots(t *testing.T, dir string) map[string]Slot {
	t.Helper()
	cs, err := Claims(dir)
	if err != nil {
		t.Fatalf("Claims() = %v", err)
	}
	m := map[string]Slot{}
	for _, c := range cs {
		m[c.Instance] = c.Slot
	}
	return m
}

func TestClaimSlot(t *testing.T) {
	nstest.New(t)
	dir := testRegistry(t)
	a, err := ClaimSlot(dir, testInstance("a"))
	if err != nil {
		t.Fatalf("ClaimSlot(a) = %v", err)
	}
	want := testInstance("a")
	want.PID, want.Alive = os.Getpid(), true
	if diff := cmp.Diff(want, a); diff != "" {
		t.Errorf("ClaimSlot(a) (-want +got):\n%s", diff)
	}
	ns, err := netnsID()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, claimFileName(ns, 0))
	for p, mode := range map[string]fs.FileMode{dir: fs.ModeDir | 0o700, path: 0o600} {
		if fi, err := os.Stat(p); err != nil || fi.Mode() != mode {
			t.Errorf("Stat(%s) = %v, %v, want mode %v", p, fi.Mode(), err, mode)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, got, err := parseClaim(filepath.Base(path), b); err != nil || got.Instance != "a" || got.PID != os.Getpid() {
		t.Errorf("claim file %s = %q: %+v, %v", path, b, got, err)
	}

	if b, err := ClaimSlot(dir, testInstance("b")); err != nil || b.Slot != 1 {
		t.Fatalf("ClaimSlot(b) = slot %d, %v, want slot 1", b.Slot, err)
	}
	if err := ReleaseClaim(dir, 0); err != nil {
		t.Fatalf("ReleaseClaim(0) = %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("claim file after ReleaseClaim: %v", err)
	}
	if err := ReleaseClaim(dir, 0); err != nil {
		t.Errorf("second ReleaseClaim(0) = %v, want nil", err)
	}
	if c, err := ClaimSlot(dir, testInstance("c")); err != nil || c.Slot != 0 {
		t.Fatalf("ClaimSlot(c) after releasing slot 0 = slot %d, %v, want slot 0", c.Slot, err)
	}
	if diff := cmp.Diff(map[string]Slot{"b": 1, "c": 0}, claimSlots(t, dir)); diff != "" {
		t.Errorf("claims (-want +got):\n%s", diff)
	}
}

func TestClaimSlotConflict(t *testing.T) {
	nstest.New(t)
	dir := testRegistry(t)
	work := claimAs(t, dir, "work", os.Getpid())
	tests := []struct {
		name   string
		c      Claim
		reason ConflictReason
	}{
		{"same instance", func() Claim { c := testInstance("work"); c.Tun = "other"; return c }(), ConflictRunning},
		{"same tun", func() Claim { c := testInstance("home"); c.Tun = work.Tun; return c }(), ConflictTun},
		{"kill switch", func() Claim { c := testInstance("home"); c.KillSwitch = true; return c }(), ConflictOurKillSwitch},
	}
	for _, tt := range tests {
		_, err := ClaimSlot(dir, tt.c)
		if ce, ok := errors.AsType[*ConflictError](err); !ok || ce.Reason != tt.reason || ce.Claim.Instance != "work" {
			t.Errorf("%s: ClaimSlot(%+v) = %v, want a %v conflict with work", tt.name, tt.c, err, tt.reason)
		}
	}
	if diff := cmp.Diff(map[string]Slot{"work": 0}, claimSlots(t, dir)); diff != "" {
		t.Errorf("claims after refusals (-want +got):\n%s", diff)
	}
	if _, err := ClaimSlot(dir, Claim{Instance: "Bad/Name", StateDir: "x", Tun: "mq0"}); err == nil || !strings.Contains(err.Error(), "claim a slot: instance:") {
		t.Errorf("ClaimSlot(invalid) = %v, want a validation error", err)
	}
}

// TestClaimSlotRace has 8 goroutines claim slots at once in one
// namespace: each must get a slot of its own.
func TestClaimSlotRace(t *testing.T) {
	ns := nstest.New(t)
	dir := testRegistry(t)
	const n = 8
	type result struct {
		slot Slot
		err  error
	}
	results := make(chan result, n)
	for i := range n {
		go func() {
			// Join the test's namespace for good: the thread ends
			// with the goroutine.
			runtime.LockOSThread()
			if err := netns.Set(ns); err != nil {
				results <- result{err: err}
				return
			}
			c, err := ClaimSlot(dir, testInstance(string(rune('a'+i))))
			results <- result{c.Slot, err}
		}()
	}
	var slots []Slot
	for range n {
		r := <-results
		if r.err != nil {
			t.Errorf("ClaimSlot() = %v", r.err)
			continue
		}
		slots = append(slots, r.slot)
	}
	slices.Sort(slots)
	if want := []Slot{0, 1, 2, 3, 4, 5, 6, 7}; !slices.Equal(slots, want) {
		t.Errorf("slots claimed = %v, want %v", slots, want)
	}
	if got := claimSlots(t, dir); len(got) != n {
		t.Errorf("claims = %v, want %d", got, n)
	}
}

// TestClaimSlotLeftovers checks that a crashed instance whose kernel
// resources remain blocks every other instance, naming it, and that its
// slot is taken again once they are gone.
func TestClaimSlotLeftovers(t *testing.T) {
	s := Slot(0)
	leftovers := []struct {
		name   string
		add    func(t *testing.T)
		remove func() error
	}{
		{"suppress rule", func(t *testing.T) { addRule(t, s.RulePriority(), tableMain) }, func() error { r := s.Routing(); return r.Remove() }},
		{"table rule", func(t *testing.T) { addRule(t, s.RulePriority()+1, s.Table()) }, func() error { r := s.Routing(); return r.Remove() }},
		{"route", func(t *testing.T) { addThrowRoute(t, s.Table()) }, func() error { r := s.Routing(); return r.Remove() }},
		{"kill switch", func(t *testing.T) { addNFTTable(t, s.KillSwitchTable()) }, func() error { return DeleteTable(s.KillSwitchTable()) }},
	}
	for _, lo := range leftovers {
		t.Run(lo.name, func(t *testing.T) {
			nstest.New(t)
			dir := testRegistry(t)
			if c := claimAs(t, dir, "work", deadPID(t)); c.Slot != s {
				t.Fatalf("crashed claim took slot %d, want %d", c.Slot, s)
			}
			lo.add(t)
			cs, err := Claims(dir)
			if err != nil || len(cs) != 1 || cs[0].Alive || !cs[0].Leftovers {
				t.Fatalf("Claims() = %+v, %v, want one dead claim with leftovers", cs, err)
			}
			_, err = ClaimSlot(dir, testInstance("home"))
			if ce, ok := errors.AsType[*ConflictError](err); !ok || ce.Reason != ConflictCrashed || ce.Claim.Instance != "work" {
				t.Fatalf("ClaimSlot(home) = %v, want the crash of work", err)
			}
			if want := `host blocked by a crashed masque up (instance "work"): run masque down work`; err.Error() != want {
				t.Errorf("ClaimSlot(home) = %q, want %q", err, want)
			}
			if err := lo.remove(); err != nil {
				t.Fatal(err)
			}
			if c, err := ClaimSlot(dir, testInstance("home")); err != nil || c.Slot != s || c.Leftovers {
				t.Fatalf("ClaimSlot(home) after clean-up = %+v, %v, want slot %d without leftovers", c, err, s)
			}
			if diff := cmp.Diff(map[string]Slot{"home": s}, claimSlots(t, dir)); diff != "" {
				t.Errorf("claims (-want +got):\n%s", diff)
			}
		})
	}
}

// TestClaimSlotTakeover checks that a new run of a crashed instance takes
// its slot over, leftovers and all, rather than the lowest free one.
func TestClaimSlotTakeover(t *testing.T) {
	nstest.New(t)
	dir := testRegistry(t)
	claimAs(t, dir, "a", os.Getpid())
	if c := claimAs(t, dir, "work", deadPID(t)); c.Slot != 1 {
		t.Fatalf("crashed claim took slot %d, want 1", c.Slot)
	}
	addNFTTable(t, Slot(1).KillSwitchTable())
	if err := ReleaseClaim(dir, 0); err != nil {
		t.Fatal(err)
	}
	c, err := ClaimSlot(dir, testInstance("work"))
	if err != nil || c.Slot != 1 || !c.Leftovers || c.PID != os.Getpid() {
		t.Fatalf("ClaimSlot(work) = %+v, %v, want slot 1 with leftovers, held by this process", c, err)
	}
	cs, err := Claims(dir)
	if err != nil || len(cs) != 1 || !cs[0].Alive || cs[0].PID != os.Getpid() {
		t.Errorf("Claims() = %+v, %v, want work's new claim alone", cs, err)
	}
}

// TestClaimSlotSkipsOccupied checks that slots whose names something
// without a claim uses are not taken, and that another program's rule at
// a dead claim's priorities does not count as masque's leftovers.
func TestClaimSlotSkipsOccupied(t *testing.T) {
	nstest.New(t)
	dir := testRegistry(t)
	addRule(t, Slot(0).RulePriority(), 100)      // another program's
	addRule(t, Slot(1).RulePriority()+1, 0x4d52) // an older masque's, unclaimed
	addNFTTable(t, Slot(2).KillSwitchTable())
	if c := claimAs(t, dir, "a", os.Getpid()); c.Slot != 3 {
		t.Errorf("ClaimSlot(a) = slot %d, want 3", c.Slot)
	}
	if c := claimAs(t, dir, "crashed", deadPID(t)); c.Slot != 4 {
		t.Fatalf("ClaimSlot(crashed) = slot %d, want 4", c.Slot)
	}
	addRule(t, Slot(4).RulePriority(), 200) // tailscale's kind of rule
	cs, err := Claims(dir)
	if err != nil || len(cs) != 2 || cs[1].Instance != "crashed" || cs[1].Leftovers {
		t.Fatalf("Claims() = %+v, %v, want crashed without leftovers", cs, err)
	}
	if c := claimAs(t, dir, "b", os.Getpid()); c.Slot != 5 {
		t.Errorf("ClaimSlot(b) = slot %d, want 5", c.Slot)
	}
}

// TestClaimsOtherNetns checks that claims are per network namespace.
func TestClaimsOtherNetns(t *testing.T) {
	nsA := nstest.New(t)
	dir := testRegistry(t)
	claimAs(t, dir, "work", os.Getpid())
	nstest.New(t) // this thread moves on to a second namespace
	if got := claimSlots(t, dir); len(got) != 0 {
		t.Errorf("claims in another namespace = %v, want none", got)
	}
	if c := claimAs(t, dir, "work", os.Getpid()); c.Slot != 0 {
		t.Errorf("ClaimSlot(work) in another namespace = slot %d, want 0", c.Slot)
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 2 {
		t.Errorf("registry holds %v, %v, want two claims", entries, err)
	}
	if err := netns.Set(nsA); err != nil {
		t.Fatal(err)
	}
	if _, err := ClaimSlot(dir, testInstance("work")); err == nil {
		t.Errorf("ClaimSlot(work) back in the first namespace = nil, want a conflict")
	}
}

func TestReleaseClaim(t *testing.T) {
	nstest.New(t)
	dir := testRegistry(t)
	pid, kill := startMasque(t)
	c := claimAs(t, dir, "work", pid)
	err := ReleaseClaim(dir, c.Slot)
	if want := `release slot 0: held by instance "work" (pid `; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("ReleaseClaim(another live process's) = %v, want %q", err, want)
	}
	if cs, err := Claims(dir); err != nil || len(cs) != 1 || !cs[0].Alive {
		t.Fatalf("Claims() = %+v, %v, want work's live claim", cs, err)
	}
	kill()
	if cs, err := Claims(dir); err != nil || len(cs) != 1 || cs[0].Alive {
		t.Fatalf("Claims() = %+v, %v, want work's dead claim", cs, err)
	}
	if err := ReleaseClaim(dir, c.Slot); err != nil {
		t.Errorf("ReleaseClaim(dead process's) = %v", err)
	}
	if got := claimSlots(t, dir); len(got) != 0 {
		t.Errorf("claims after release = %v, want none", got)
	}
	if err := ReleaseClaim(dir, MaxInstances); err == nil {
		t.Errorf("ReleaseClaim(%d) = nil, want out of range", MaxInstances)
	}
	if err := ReleaseClaim(filepath.Join(t.TempDir(), "none"), 0); err != nil {
		t.Errorf("ReleaseClaim(no registry) = %v, want nil", err)
	}
}

func TestRegistryTrust(t *testing.T) {
	nstest.New(t)
	missing := testRegistry(t)
	if cs, err := Claims(missing); err != nil || cs != nil {
		t.Errorf("Claims(missing) = %v, %v, want none", cs, err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Claims created the registry: %v", err)
	}
	open := mkdir(t, t.TempDir(), "instances", 0o777)
	chmod(t, open, 0o777)
	link := filepath.Join(t.TempDir(), "instances")
	symlink(t, mkdir(t, t.TempDir(), "real", 0o700), link)
	for _, dir := range []string{open, link} {
		_, err := ClaimSlot(dir, testInstance("a"))
		if !errors.Is(err, ErrUntrustedState) || !strings.Contains(err.Error(), "instance registry "+dir) {
			t.Errorf("ClaimSlot(%s) = %v, want an untrusted instance registry", dir, err)
		}
		if _, err := Claims(dir); !errors.Is(err, ErrUntrustedState) {
			t.Errorf("Claims(%s) = %v, want ErrUntrustedState", dir, err)
		}
	}
}

// TestClaimsCorrupt checks that a claim file that does not parse stops
// ClaimSlot: it could be a full tunnel's.
func TestClaimsCorrupt(t *testing.T) {
	nstest.New(t)
	dir := testRegistry(t)
	claimAs(t, dir, "a", os.Getpid())
	ns, err := netnsID()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, claimFileName(ns, 3))
	if err := os.WriteFile(path, []byte(`{"pid":`), 0o600); err != nil {
		t.Fatal(err)
	}
	// Files that are no claims of this namespace are none of its business.
	for _, name := range []string{"notes.txt", claimFileName(ns+1, 4), "03.3.json"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	want := "claim " + path + ": unexpected EOF (remove it if no masque up holds that slot)"
	if _, err := Claims(dir); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Claims() = %v, want %q", err, want)
	}
	if _, err := ClaimSlot(dir, testInstance("b")); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("ClaimSlot() = %v, want %q", err, want)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if c, err := ClaimSlot(dir, testInstance("b")); err != nil || c.Slot != 1 {
		t.Errorf("ClaimSlot() without the corrupt claim = %+v, %v, want slot 1", c, err)
	}
}

func TestProcessAlive(t *testing.T) {
	pid, kill := startMasque(t)
	sleep := exec.Command("sleep", "600")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleep.Process.Kill(); sleep.Wait() })
	tests := []struct {
		name string
		pid  int
		want bool
	}{
		{"this process", os.Getpid(), true},
		{"masque", pid, true},
		{"another program", sleep.Process.Pid, false},
		{"dead", deadPID(t), false},
		{"zero", 0, false},
		{"negative", -1, false},
	}
	for _, tt := range tests {
		if got := processAlive(tt.pid); got != tt.want {
			t.Errorf("processAlive(%s, %d) = %v, want %v", tt.name, tt.pid, got, tt.want)
		}
	}
	kill()
	if processAlive(pid) {
		t.Errorf("processAlive(killed masque) = true")
	}
}
