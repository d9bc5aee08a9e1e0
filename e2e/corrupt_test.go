package e2e

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Two ways a state file ends up corrupt: cut short (a crash while a less
// careful writer wrote it) and zeroed (a file system that lost its data).
var (
	truncatedState = []byte(`{"version":1,"pid":4242,"tun":"masque0","routing":{"link":"mas`)
	zeroedState    = make([]byte, 64)
)

// crashCorrupted runs masque up in the client namespace with extra, kills
// it with SIGKILL once it is up, overwrites its state file with garbage
// and returns its state directory.
func crashCorrupted(t *testing.T, tp *topo, garbage []byte, extra ...string) string {
	t.Helper()
	c := tp.startClient(t, tp.client, tokenAuth("alice"), extra...)
	crash(t, c)
	path := filepath.Join(c.stateDir, "state.json")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("no state file after SIGKILL: %v", err)
	}
	if err := os.WriteFile(path, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	return c.stateDir
}

// crash kills c with SIGKILL.
func crash(t *testing.T, c *client) {
	t.Helper()
	c.wantExit0 = false
	c.signal(syscall.SIGKILL)
	if !c.wait(5 * time.Second) {
		t.Fatal("masque up survived SIGKILL")
	}
}

// ruleset returns nft list ruleset in ns.
func ruleset(t *testing.T, ns string) string {
	t.Helper()
	r := runIn(t, ns, 10*time.Second, "nft", "list", "ruleset")
	if r.code != 0 {
		t.Fatalf("nft list ruleset: exit %d: %s", r.code, r.stderr)
	}
	return r.stdout
}

// hasKillSwitch reports whether ruleset holds masque's kill switch: its
// table with an output chain that drops by default.
func hasKillSwitch(ruleset string) bool {
	return strings.Contains(ruleset, "table inet masque_killswitch {") &&
		strings.Contains(ruleset, "type filter hook output priority filter; policy drop;")
}

// checkBlocked checks that pings from the client namespace to the target,
// IPv4 and IPv6, get no packet out of c0.
func checkBlocked(t *testing.T, ns, what string) {
	t.Helper()
	dump := startCapture(t, ns, leakFilter, true)
	p4 := ping(t, ns, targetIP4, 2)
	p6 := ping(t, ns, targetIP6, 2)
	time.Sleep(300 * time.Millisecond)
	dump.stop(5 * time.Second)
	if p4.sent+p6.sent == 0 {
		t.Errorf("%s: ping sent nothing, so the capture proves nothing:\n%s%s", what, p4.out, p6.out)
	}
	if leaked := nonEmptyLines(dump.stdout.String()); len(leaked) > 0 {
		t.Errorf("%s: %d packets left c0:\n%s", what, len(leaked), tail(strings.Join(leaked, "\n"), 3000))
	}
}

// checkCorruptCopy checks that the state directory keeps the corrupt file,
// byte for byte, as state.json.corrupt.
func checkCorruptCopy(t *testing.T, stateDir string, garbage []byte) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(stateDir, "state.json.corrupt"))
	if err != nil || string(b) != string(garbage) {
		t.Errorf("state.json.corrupt = %q, %v, want the corrupt file %q", b, err, garbage)
	}
}

// startHeldBack starts masque up with stateDir while the server's port is
// held back (dropped), waits for the warning line that contains warn, and
// checks that the host is blocked meanwhile: the kill switch is up and not
// one ping leaves c0. It returns the process and the function that
// releases the server.
func startHeldBack(t *testing.T, tp *topo, stateDir, warn, what string) (*proc, func()) {
	t.Helper()
	// QUIC retransmits its Initial with backoff, hence the generous
	// --connect-timeout.
	release := nftInputDrop(t, tp.server, "mqe_hold", "udp dport 4433 drop")
	p := startProc(t, tp.client, "masque up "+what,
		clientArgv(stateDir, tokenAuth("alice"), "--connect-timeout", "60s")...)
	p.grace = 10 * time.Second
	p.wantExit0 = true
	if _, err := p.waitLine(p.stderr, 15*time.Second, func(l string) bool {
		return strings.Contains(l, "level=WARN") && strings.Contains(l, warn)
	}); err != nil {
		t.Fatalf("masque up %s: no warning %q: %v\nstderr:\n%s", what, warn, err, p.stderr.String())
	}
	if rs := ruleset(t, tp.client); !hasKillSwitch(rs) {
		t.Errorf("no kill switch while masque up %s waits for the server:\n%s", what, rs)
	}
	checkBlocked(t, tp.client, what+", tunnel not up yet")
	// Only the connecting line: an "up:" line would mean the checks
	// above ran too late.
	if lines := nonEmptyLines(p.stdout.String()); len(lines) != 1 || !strings.HasPrefix(lines[0], "connecting: ") {
		t.Fatalf("masque up printed %q while the server was held back, want its connecting line alone: the checks above ran too late", lines)
	}
	return p, release
}

// finishHeldBack releases the server for p (startHeldBack), waits for the
// tunnel, checks that it carries traffic with the kill switch up, stops p
// and checks that the client namespace is as it was.
func finishHeldBack(t *testing.T, tp *topo, p *proc, release func()) {
	t.Helper()
	release()
	if _, err := p.waitLine(p.stdout, 60*time.Second, func(l string) bool { return strings.HasPrefix(l, "up: ") }); err != nil {
		t.Fatalf("masque up: %v\nstderr:\n%s", err, tail(p.stderr.String(), 4000))
	}
	checkPing(t, tp.client, 3)
	if rs := ruleset(t, tp.client); !hasKillSwitch(rs) {
		t.Errorf("no kill switch with the tunnel up (a full tunnel keeps it):\n%s", rs)
	}
	p.signal(syscall.SIGINT)
	if !p.wait(10 * time.Second) {
		t.Fatal("masque up did not exit on SIGINT")
	}
	if p.exitCode() != 0 {
		t.Errorf("masque up after SIGINT: %s, want exit 0\nstderr:\n%s", p.exitString(), tail(p.stderr.String(), 2000))
	}
	if !tp.checkClean(tp.client) {
		t.FailNow()
	}
}

// TestCorruptStateUpStartsBlocked: after a SIGKILL, a masque up that finds
// its state file corrupt blocks the host before anything else (while the
// server is unreachable, not one packet leaves c0), keeps the file as
// state.json.corrupt, then comes up and carries traffic; stopped, it leaves
// the namespace as it found it. With --kill-switch=false the blocking
// state ends once the tunnel is up.
func TestCorruptStateUpStartsBlocked(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	// The crashed client runs without a kill switch, so that a kill switch
	// seen later is the new run's.
	stateDir := crashCorrupted(t, tp, truncatedState, "--kill-switch=false")
	if hasKillSwitch(ruleset(t, tp.client)) {
		t.Fatal("the crashed client left a kill switch although it ran without one")
	}

	// Hold the server back, so that the new run is caught before its
	// tunnel is up.
	p, release := startHeldBack(t, tp, stateDir, "state file corrupt", "after a corrupt state")
	checkCorruptCopy(t, stateDir, truncatedState)
	finishHeldBack(t, tp, p, release)

	// --kill-switch=false: blocked until up, open afterwards.
	stateDir = crashCorrupted(t, tp, zeroedState, "--kill-switch=false")
	c := tp.startClientArgv(t, tp.client, stateDir, clientArgv(stateDir, tokenAuth("alice"), "--kill-switch=false"))
	for _, want := range []string{"state file corrupt", "kill switch off: the tunnel is up"} {
		if _, err := c.waitLine(c.stderr, 5*time.Second, func(l string) bool { return strings.Contains(l, want) }); err != nil {
			t.Errorf("masque up --kill-switch=false after a corrupt state: no %q in its log (%v):\n%s", want, err, tail(c.stderr.String(), 3000))
		}
	}
	if rs := ruleset(t, tp.client); strings.Contains(rs, "masque_killswitch") {
		t.Errorf("kill switch still up with the tunnel up and --kill-switch=false:\n%s", rs)
	}
	checkPing(t, tp.client, 3)
	checkCorruptCopy(t, stateDir, zeroedState)
	c.signal(syscall.SIGINT)
	if !c.wait(10 * time.Second) {
		t.Fatal("masque up did not exit on SIGINT")
	}
	// newTopo's cleanup checks the namespace once more.
}

// TestCorruptStateDown: after a SIGKILL with the kill switch on and DNS
// applied, a masque down that finds the state file zeroed removes the
// leftovers by name: the namespace, ruleset included, equals its state
// before masque up, resolv.conf is the original byte for byte, and the
// corrupt file is kept as state.json.corrupt. A second masque down finds
// nothing to undo.
func TestCorruptStateDown(t *testing.T) {
	tp := newTopo(t, false)
	nsDir := filepath.Join("/etc/netns", tp.client)
	if err := os.MkdirAll(nsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(nsDir) })
	orig := "# the client host's own resolver\nnameserver 192.0.2.53\noptions ndots:2\n"
	if err := os.WriteFile(filepath.Join(nsDir, "resolv.conf"), []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	resolvConf := func() string { return runIn(t, tp.client, 10*time.Second, "cat", "/etc/resolv.conf").stdout }
	tp.startServer(t, "--dns", "198.18.2.53")

	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(resolvConf(), "nameserver 198.18.2.53") {
		if time.Now().After(deadline) {
			t.Fatalf("resolv.conf never named the tunnel's DNS server:\n%s", resolvConf())
		}
		time.Sleep(100 * time.Millisecond)
	}
	crash(t, c)
	path := filepath.Join(c.stateDir, "state.json")
	if err := os.WriteFile(path, zeroedState, 0o600); err != nil {
		t.Fatal(err)
	}
	if !hasKillSwitch(ruleset(t, tp.client)) || resolvConf() == orig {
		t.Fatal("the crashed client left no kill switch or no DNS change: the test tests nothing")
	}

	r := runIn(t, tp.client, 20*time.Second, env.masque, "down", "--state-dir", c.stateDir)
	if r.code != 0 {
		t.Errorf("masque down: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	t.Logf("masque down:\n%s", r.stdout)
	for _, want := range []string{
		"corrupt state",
		"removed policy routing",
		"deleted nftables table inet masque_killswitch",
		"restored /etc/resolv.conf from " + filepath.Join(c.stateDir, "resolv.conf.orig"),
		"moved the corrupt state file to " + path + ".corrupt",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("masque down did not say %q:\n%s", want, r.stdout)
		}
	}
	if got := resolvConf(); got != orig {
		t.Errorf("resolv.conf after masque down:\n%q\nwant the original byte for byte:\n%q", got, orig)
	}
	tp.checkClean(tp.client)
	checkCorruptCopy(t, c.stateDir, zeroedState)
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("state.json after masque down: %v, want gone", err)
	}

	r = runIn(t, tp.client, 20*time.Second, env.masque, "down", "--state-dir", c.stateDir)
	if r.code != 0 || !strings.Contains(r.stdout, "nothing to undo") {
		t.Errorf("second masque down: exit %d, stdout %q, stderr %q; want exit 0, nothing to undo", r.code, r.stdout, r.stderr)
	}
	tp.checkClean(tp.client)
}

// TestCorruptStateUpFails: a masque up that finds its state file corrupt
// and then cannot reach its server exits 1 with one error line that says
// the host stays blocked and names masque down; the kill switch stays (not
// one packet of a ping leaves c0) until masque down removes it.
func TestCorruptStateUpFails(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	stateDir := crashCorrupted(t, tp, truncatedState)

	const nobody = "198.18.1.99:4433" // on-link, but nobody has it
	argv := clientArgv(stateDir, tokenAuth("alice"), "--connect-timeout", "2s")
	for i, a := range argv {
		if a == serverAddr {
			argv[i] = nobody
		}
	}
	r := runIn(t, tp.client, 60*time.Second, argv...)
	if r.code != 1 {
		t.Errorf("masque up --server %s after a corrupt state: exit %d, want 1\nstderr: %s", nobody, r.code, r.stderr)
	}
	// stderr: the log (the warning about the corrupt state first), then
	// the one error line.
	lines := nonEmptyLines(r.stderr)
	if len(lines) == 0 || !strings.Contains(lines[0], "level=WARN") || !strings.Contains(lines[0], "state file corrupt") {
		t.Errorf("stderr does not start with the warning about the corrupt state file:\n%s", r.stderr)
	}
	if len(lines) > 0 {
		last := lines[len(lines)-1]
		checkErrorLine(t, "masque up that fails blocked", last, "masque: ", "stays blocked")
		for _, want := range []string{nobody, "masque down --state-dir " + stateDir} {
			if !strings.Contains(last, want) {
				t.Errorf("error line does not name %q: %s", want, last)
			}
		}
	}
	if rs := ruleset(t, tp.client); !hasKillSwitch(rs) {
		t.Errorf("no kill switch after the failed masque up:\n%s", rs)
	}
	checkBlocked(t, tp.client, "after a failed masque up from a corrupt state")
	checkCorruptCopy(t, stateDir, truncatedState)
	if tuns := tunLinks(t, tp.client); len(tuns) > 0 {
		t.Errorf("TUN links left after the failed masque up: %v", tuns)
	}

	// The failed run left a valid state that names only the kill switch.
	d := runIn(t, tp.client, 20*time.Second, env.masque, "down", "--state-dir", stateDir)
	if d.code != 0 || !strings.Contains(d.stdout, "left: nftables table inet masque_killswitch\n") {
		t.Errorf("masque down: exit %d, want 0 undoing only the kill switch\nstdout: %s\nstderr: %s", d.code, d.stdout, d.stderr)
	}
	tp.checkClean(tp.client)
}

// TestCrashedKillSwitchStaysUp: a masque up killed with its kill switch up
// left the host blocked. The next masque up keeps it blocked until its own
// tunnel is up (its kill switch replaces the old one before anything else
// is undone): while the server is held back, not one packet leaves c0.
func TestCrashedKillSwitchStaysUp(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	crash(t, c)
	if !hasKillSwitch(ruleset(t, tp.client)) {
		t.Fatal("the crashed client left no kill switch: nothing to keep")
	}
	p, release := startHeldBack(t, tp, c.stateDir, "left the kill switch up", "after a crash")
	finishHeldBack(t, tp, p, release)
}
