package e2e

// Instances own what they create (issue 15): a second masque up that
// would collide with a running one is refused before it touches the
// host, and split-tunnel instances side by side each keep their routes,
// rules and kill switch when the other stops or crashes.

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// instanceView is what of one instance the kernel holds: its rules, the
// routes of its table and its kill switch's table.
func instanceView(t *testing.T, ns string, table int, ksTable string) string {
	t.Helper()
	var b strings.Builder
	for _, fam := range []string{"-4", "-6"} {
		for _, l := range strings.Split(runIn(t, ns, 5*time.Second, "ip", fam, "rule", "show").stdout, "\n") {
			if strings.Contains(l, fmt.Sprintf("lookup %d", table)) || strings.Contains(l, fmt.Sprintf("lookup %#x", table)) {
				b.WriteString(l + "\n")
			}
		}
		b.WriteString(runIn(t, ns, 5*time.Second, "ip", fam, "route", "show", "table", fmt.Sprint(table)).stdout)
	}
	if ksTable != "" {
		b.WriteString(runIn(t, ns, 5*time.Second, "nft", "list", "table", "inet", ksTable).stdout)
	}
	return b.String()
}

// TestSecondInstanceRefused: with a full tunnel up (state dir rs1), a
// second masque up with another state directory, with the same TUN name
// and then with its own, is refused with one line naming the first,
// before it changes anything; the first keeps its routes, rules, kill
// switch and traffic, and nothing leaks meanwhile.
func TestSecondInstanceRefused(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	first := tp.startClient(t, tp.client, tokenAuth("alice"))
	pid := first.cmd.Process.Pid
	before := instanceView(t, tp.client, 0x4d51, "masque_killswitch")
	if !strings.Contains(before, "policy drop") {
		t.Fatalf("the first instance has no kill switch:\n%s", before)
	}
	dump := startCapture(t, tp.client, leakFilter, true)
	for _, tt := range []struct {
		name  string
		extra []string
		want  string
	}{
		{"same TUN", nil, fmt.Sprintf("masque: TUN masque0 is in use by pid %d (masque)", pid)},
		{"own TUN", []string{"--tun", "masque1"}, fmt.Sprintf(`masque: masque instance "default" is already running (pid %d, state %s)`, pid, first.stateDir)},
		{"own TUN and profile", []string{"--tun", "masque1", "--config", t.TempDir() + "/other.conf"}, ""},
	} {
		if tt.want == "" {
			// A profile of its own: another instance, refused for the
			// first one's full tunnel and kill switch.
			writeFile(t, tt.extra[3], fmt.Sprintf("server = %q\nca = %q\ntoken-file = %q\nstate-dir = %q\n",
				serverAddr, env.certDir+"/ca.crt", env.tokenFile["bob"], t.TempDir()))
			tt.extra = tt.extra[:4]
			tt.want = fmt.Sprintf(`masque: instance "default" (pid %d) is a full tunnel already`, pid)
		}
		r := runIn(t, tp.client, 20*time.Second, clientArgv(t.TempDir(), tokenAuth("bob"), tt.extra...)...)
		lines := nonEmptyLines(r.stderr)
		if r.code != 1 || len(lines) != 1 || !strings.HasPrefix(lines[0], tt.want) {
			t.Errorf("second masque up (%s): exit %d, stderr %q, want exit 1 and one line starting %q", tt.name, r.code, r.stderr, tt.want)
		}
		if strings.Contains(r.stdout, "up: ") {
			t.Errorf("second masque up (%s) came up:\n%s", tt.name, r.stdout)
		}
		if after := instanceView(t, tp.client, 0x4d51, "masque_killswitch"); after != before {
			t.Errorf("the first instance changed after the second was refused (%s):\nbefore:\n%s\nafter:\n%s", tt.name, before, after)
		}
		checkPing(t, tp.client, 2)
	}
	if leaked := stopCapture(dump); len(leaked) != 0 {
		t.Errorf("%d packets left c0 outside the tunnel:\n%s", len(leaked), strings.Join(leaked[:min(5, len(leaked))], "\n"))
	}
	st := first.status(t)
	if st.State != "up" || !st.KillSwitch {
		t.Errorf("first instance status after the refusals: %+v", st)
	}
}

// TestSplitInstancesSideBySide: two split-tunnel instances, one routing
// the target's IPv4 address and one its IPv6 address, each on its own TUN
// and slot; killing one (SIGKILL) and then masque down of it leave the
// other's routes and rules as they were and its traffic flowing; and the
// first's clean exit leaves the host clean.
func TestSplitInstancesSideBySide(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	sdA, sdB := t.TempDir(), t.TempDir()
	cfg := t.TempDir()
	for _, p := range []struct{ name, token, stateDir, route string }{
		{"alpha", "alice", sdA, targetIP4 + "/32"},
		{"beta", "bob", sdB, targetIP6 + "/128"},
	} {
		writeFile(t, cfg+"/"+p.name+".conf", fmt.Sprintf("server = %q\nca = %q\ntoken-file = %q\nstate-dir = %q\nroute = [%q]\n",
			serverAddr, env.certDir+"/ca.crt", env.tokenFile[p.token], p.stateDir, p.route))
	}
	a := tp.startClientArgv(t, tp.client, sdA, []string{env.masque, "up", "alpha", "--config-dir", cfg})
	b := tp.startClientArgv(t, tp.client, sdB, []string{env.masque, "up", "beta", "--config-dir", cfg})
	if a.up.tun != "masque-alpha" || b.up.tun != "masque-beta" {
		t.Errorf("TUNs %s and %s, want masque-alpha and masque-beta", a.up.tun, b.up.tun)
	}
	viewA := instanceView(t, tp.client, 0x4d51, "")
	viewB := instanceView(t, tp.client, 0x4d52, "")
	if !strings.Contains(viewA, targetIP4+" dev masque-alpha") || !strings.Contains(viewB, targetIP6+" dev masque-beta") {
		t.Fatalf("instance routes:\nalpha (table 0x4d51):\n%s\nbeta (table 0x4d52):\n%s", viewA, viewB)
	}
	checkPing(t, tp.client, 2) // IPv4 through alpha, IPv6 through beta

	b.wantExit0 = false
	b.signal(syscall.SIGKILL)
	if !b.wait(5 * time.Second) {
		t.Fatal("beta survived SIGKILL")
	}
	if got := instanceView(t, tp.client, 0x4d51, ""); got != viewA {
		t.Errorf("alpha's routes and rules changed when beta crashed:\nbefore:\n%s\nafter:\n%s", viewA, got)
	}
	if r := ping(t, tp.client, targetIP4, 3); r.received != 3 {
		t.Errorf("alpha's ping after beta crashed: %d/3", r.received)
	}
	r := runIn(t, tp.client, 20*time.Second, env.masque, "down", "beta", "--config-dir", cfg)
	if r.code != 0 || !strings.Contains(r.stdout, "undid what masque up") {
		t.Errorf("masque down beta: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if got := instanceView(t, tp.client, 0x4d51, ""); got != viewA {
		t.Errorf("alpha's routes and rules changed by masque down beta:\nbefore:\n%s\nafter:\n%s", viewA, got)
	}
	if got := instanceView(t, tp.client, 0x4d52, ""); strings.TrimSpace(got) != "" {
		t.Errorf("beta's rules and routes after masque down beta:\n%s", got)
	}
	if r := ping(t, tp.client, targetIP4, 3); r.received != 3 {
		t.Errorf("alpha's ping after masque down beta: %d/3", r.received)
	}
	if st := a.status(t); st.State != "up" {
		t.Errorf("alpha after beta's crash and down: %s", st.State)
	}
	if _, killed := a.stop(10 * time.Second); killed {
		t.Fatal("alpha ignored SIGTERM")
	}
	tp.checkClean(tp.client)
}

// writeFile writes body to path, mode 0600, or fails the test.
func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}
