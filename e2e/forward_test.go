package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Addresses of the guest behind the client (a container or VM on a
// bridge of the client host): a network the topology does not use.
const (
	guestIP4    = "198.18.77.2"
	guestGW4    = "198.18.77.1"
	guestIP6    = "2001:db8:7::2"
	guestGW6    = "2001:db8:7::1"
	guestIf     = "g0" // the guest's side of the veth
	guestHostIf = "v0" // the client's side
)

// addGuest creates the namespace tp.id+"-g" behind the client: a veth
// from it to the client namespace, the guest's default routes via the
// client, and the client forwarding both families as a container host
// does. It returns the guest's namespace. Its Cleanup, which runs before
// the topology's, stops forwarding in the client again, deletes the
// guest's namespace (and the veth with it) and puts back the client's
// set-up state for the topology's final check.
func (tp *topo) addGuest(t *testing.T) string {
	t.Helper()
	guest := tp.id + "-g"
	orig := tp.base[tp.client]
	created.Lock()
	created.names = append(created.names, guest)
	created.Unlock()
	mustRun(t, "ip", "netns", "add", guest)
	t.Cleanup(func() {
		// ip_forward=0 also sets every link's forwarding to 0 again.
		if out, err := runInErr(tp.client, 10*time.Second, "sysctl", "-qw", "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"); err != nil || out.code != 0 {
			t.Errorf("reset forwarding in %s: %v %s", tp.client, err, out.stderr)
		}
		if out, err := exec.Command("ip", "netns", "del", guest).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
			t.Errorf("ip netns del %s: %v: %s", guest, err, out)
		}
		if left := existingNamespaces([]string{guest}); len(left) > 0 {
			t.Errorf("namespace %s still exists after the test", guest)
		}
		tp.base[tp.client] = orig
	})
	sysctl(t, guest, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	mustRun(t, "ip", "-n", guest, "link", "set", "lo", "up")
	mustRun(t, "ip", "-n", guest, "link", "add", guestIf, "type", "veth", "peer", "name", guestHostIf, "netns", tp.client)
	for _, a := range []struct{ ns, dev, a4, a6 string }{
		{guest, guestIf, guestIP4 + "/24", guestIP6 + "/64"},
		{tp.client, guestHostIf, guestGW4 + "/24", guestGW6 + "/64"},
	} {
		mustRun(t, "ip", "-n", a.ns, "addr", "add", a.a4, "dev", a.dev)
		mustRun(t, "ip", "-n", a.ns, "addr", "add", a.a6, "dev", a.dev, "nodad")
		mustRun(t, "ip", "-n", a.ns, "link", "set", a.dev, "up")
	}
	mustRun(t, "ip", "-n", guest, "route", "add", "default", "via", guestGW4)
	mustRun(t, "ip", "-n", guest, "-6", "route", "add", "default", "via", guestGW6)
	sysctl(t, tp.client, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	// The client's state with the guest's link is what each run must
	// leave behind.
	tp.base[tp.client] = settle(t, tp.client)
	return guest
}

// tunForwarding returns the TUN's IPv4 forwarding sysctl in ns.
func tunForwarding(t *testing.T, ns, tunName string) string {
	t.Helper()
	return strings.TrimSpace(runIn(t, ns, 5*time.Second, "cat", "/proc/sys/net/ipv4/conf/"+tunName+"/forwarding").stdout)
}

// guestPings sends 10 pings from the guest to the target, IPv4 and IPv6,
// while capturing what leaves the client's c0 outside the tunnel, and
// returns the replies per family and the leaked packets.
func guestPings(t *testing.T, tp *topo, guest string) (got4, got6 int, leaked []string) {
	t.Helper()
	dump := startCapture(t, tp.client, leakFilter, true)
	got4 = ping10(t, guest, targetIP4)
	got6 = ping10(t, guest, targetIP6)
	return got4, got6, stopCapture(dump)
}

// ping10 sends exactly 10 echo requests from ns to addr, 0.2 s apart,
// each waiting at most 1 s for its reply, and returns how many were
// answered. (ping's -w, which the ping helper sets, would keep sending
// until 10 were answered.)
func ping10(t *testing.T, ns, addr string) int {
	t.Helper()
	r := runIn(t, ns, 30*time.Second, "ping", "-n", "-c", "10", "-i", "0.2", "-W", "1", addr)
	m := pingCountRE.FindStringSubmatch(r.stdout)
	if m == nil || m[1] != "10" {
		t.Fatalf("ping %s from %s did not send 10 echo requests, so its count proves nothing:\n%s%s", addr, ns, r.stdout, r.stderr)
	}
	n, _ := strconv.Atoi(m[2])
	return n
}

// stopClient stops masque up with SIGINT, as a user would, and checks
// that the client namespace is as it was before.
func stopClient(t *testing.T, tp *topo, c *client, what string) {
	t.Helper()
	c.signal(syscall.SIGINT)
	if !c.wait(10 * time.Second) {
		t.Fatalf("%s: masque up did not exit on SIGINT", what)
	}
	if !tp.checkClean(tp.client) {
		t.Errorf("%s: the client namespace is not clean after masque up exited", what)
	}
}

// TestAllowForward: a guest behind the client (a container's namespace
// on a veth, the client forwarding) uses the full tunnel only with
// --allow-forward. Without it (the kill switch on) none of its pings to
// the target is answered and none leaves the client's c0 in the clear;
// with it, its pings are answered through the tunnel, the TUN forwards
// IPv4 and nothing leaves c0 in the clear either, with the kill switch or,
// without it, with the table inet masque_forward; a host that does not
// forward gets one warning and keeps its ip_forward. Each run leaves the
// client namespace as it was.
func TestAllowForward(t *testing.T) {
	tp := newTopo(t, false)
	guest := tp.addGuest(t)
	tp.startServer(t)

	// The control: the capture sees what the client forwards from the
	// guest onto the LAN (its gateway, outside any tunnel).
	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	dump := startCapture(t, tp.client, leakFilter, true)
	ping(t, guest, lanIP4, 2)
	if seen := stopCapture(dump); !strings.Contains(strings.Join(seen, "\n"), guestIP4+" > "+lanIP4) {
		t.Fatalf("the capture on c0 did not see the guest's pings to the LAN, so it cannot see a leak of the guest's packets:\n%s", strings.Join(seen, "\n"))
	}

	// Without --allow-forward: nothing of the guest's passes.
	got4, got6, leaked := guestPings(t, tp, guest)
	t.Logf("without --allow-forward: the guest's pings to the target answered: IPv4 %d/10, IPv6 %d/10", got4, got6)
	if got4 != 0 || got6 != 0 {
		t.Errorf("without --allow-forward: the guest's pings answered IPv4 %d/10, IPv6 %d/10, want 0", got4, got6)
	}
	checkNoLeak(t, "without --allow-forward, the guest's pings", leaked)
	if v := tunForwarding(t, tp.client, c.up.tun); v != "0" {
		t.Errorf("without --allow-forward: the TUN's IPv4 forwarding = %s, want 0", v)
	}
	rs := ruleset(t, tp.client)
	if !strings.Contains(rs, `oifname "`+c.up.tun+`" drop`) || strings.Contains(rs, "masquerade") || strings.Contains(rs, "masque_forward") {
		t.Errorf("without --allow-forward: the kill switch should drop what is forwarded into the TUN and masquerade nothing:\n%s", rs)
	}
	stopClient(t, tp, c, "without --allow-forward")

	// With it, and the kill switch.
	c = tp.startClient(t, tp.client, tokenAuth("alice"), "--allow-forward")
	if v := tunForwarding(t, tp.client, c.up.tun); v != "1" {
		t.Errorf("with --allow-forward: the TUN's IPv4 forwarding = %s, want 1", v)
	}
	rs = ruleset(t, tp.client)
	for _, want := range []string{`oifname "` + c.up.tun + `" masquerade`, `iifname "` + c.up.tun + `" ct state established,related accept`} {
		if !strings.Contains(rs, want) || !hasKillSwitch(rs) {
			t.Errorf("with --allow-forward and the kill switch: no %q in the kill switch:\n%s", want, rs)
		}
	}
	got4, got6, leaked = guestPings(t, tp, guest)
	t.Logf("with --allow-forward and the kill switch: the guest's pings to the target answered: IPv4 %d/10, IPv6 %d/10", got4, got6)
	if got4 < 8 || got6 < 8 {
		t.Errorf("with --allow-forward and the kill switch: the guest's pings answered IPv4 %d/10, IPv6 %d/10, want at least 8 each", got4, got6)
	}
	checkNoLeak(t, "with --allow-forward and the kill switch, the guest's pings", leaked)
	if n := strings.Count(c.stderr.String(), "ip_forward is 0"); n != 0 {
		t.Errorf("with ip_forward=1, masque up warned %d times that it is 0", n)
	}
	stopClient(t, tp, c, "with --allow-forward and the kill switch")

	// Without the kill switch, on a host that does not forward yet: one
	// warning, the host's ip_forward left alone, masque's own table.
	sysctl(t, tp.client, "net.ipv4.ip_forward=0")
	c = tp.startClient(t, tp.client, tokenAuth("alice"), "--allow-forward", "--kill-switch=false")
	if n := strings.Count(c.stderr.String(), "level=WARN msg=\"net.ipv4.ip_forward is 0"); n != 1 {
		t.Errorf("with ip_forward=0: masque up warned %d times that forwarded hosts cannot reach the tunnel, want once:\n%s", n, tail(c.stderr.String(), 2000))
	}
	if v := strings.TrimSpace(runIn(t, tp.client, 5*time.Second, "sysctl", "-n", "net.ipv4.ip_forward").stdout); v != "0" {
		t.Errorf("masque up --allow-forward changed net.ipv4.ip_forward to %s", v)
	}
	if v := tunForwarding(t, tp.client, c.up.tun); v != "1" {
		t.Errorf("with --allow-forward, kill switch off: the TUN's IPv4 forwarding = %s, want 1", v)
	}
	rs = ruleset(t, tp.client)
	if hasKillSwitch(rs) || !strings.Contains(rs, "table inet masque_forward {") || !strings.Contains(rs, `oifname "`+c.up.tun+`" masquerade`) {
		t.Errorf("with --allow-forward, kill switch off: want table inet masque_forward masquerading into the TUN and no kill switch:\n%s", rs)
	}
	sysctl(t, tp.client, "net.ipv4.ip_forward=1")
	got4, got6, leaked = guestPings(t, tp, guest)
	t.Logf("with --allow-forward, kill switch off: the guest's pings to the target answered: IPv4 %d/10, IPv6 %d/10", got4, got6)
	if got4 < 8 || got6 < 8 {
		t.Errorf("with --allow-forward, kill switch off: the guest's pings answered IPv4 %d/10, IPv6 %d/10, want at least 8 each", got4, got6)
	}
	checkNoLeak(t, "with --allow-forward, kill switch off, the guest's pings", leaked)
	stopClient(t, tp, c, "with --allow-forward, kill switch off")
}

// TestAllowForwardHostileServerCannotReachGuest: with --allow-forward a
// hostile server still cannot send to the guest behind the client: of its
// packets to the guest's addresses (every 50 ms for 3 s) none reaches the
// guest, and the client counts them as drops.
func TestAllowForwardHostileServerCannotReachGuest(t *testing.T) {
	tp := newTopo(t, false)
	guest := tp.addGuest(t)
	tp.startRogueServer(t, "-assign", "100.64.0.2/32,fd6d:6173:7175:6500::2/128",
		"-inject", "to="+guestIP4+",to="+guestIP6, "-inject-every", "50ms")
	dump := startCaptureOn(t, guest, guestIf, "udp port 40001", false)
	c := tp.startClient(t, tp.client, tokenAuth("alice"), "--allow-forward")
	if v := tunForwarding(t, tp.client, c.up.tun); v != "1" {
		t.Errorf("the TUN's IPv4 forwarding = %s, want 1", v)
	}
	time.Sleep(3 * time.Second)
	reached := stopCapture(dump)
	st := c.status(t)
	var dropped uint64
	for _, n := range st.Drops {
		dropped += n
	}
	t.Logf("packets for the guest from the server: %d reached the guest; client drops %v", len(reached), st.Drops)
	if len(reached) != 0 {
		t.Errorf("%d packets from the server reached the guest behind the client:\n%s", len(reached), strings.Join(reached[:min(len(reached), 5)], "\n"))
	}
	// About 60 per family: the injections did arrive at the client.
	if dropped < 20 {
		t.Errorf("the client counted %d drops for about %d packets to the guest, so they may not have arrived at all: %v", dropped, 2*3000/50, fmt.Sprint(st.Drops))
	}
	stopClient(t, tp, c, "hostile server")
}

// TestAllowForwardCrash: the table inet masque_forward of --allow-forward
// without the kill switch outlives a crashed masque up, and masque down
// deletes it, both by the state file that names it and, when the state
// file is corrupt, by its well-known name.
func TestAllowForwardCrash(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	for _, tc := range []struct {
		name    string
		garbage []byte // nil: the state file as the crashed run left it
	}{
		{"state file", nil},
		{"corrupt state file", truncatedState},
	} {
		c := tp.startClient(t, tp.client, tokenAuth("alice"), "--allow-forward", "--kill-switch=false")
		crash(t, c)
		if rs := ruleset(t, tp.client); !strings.Contains(rs, "table inet masque_forward {") {
			t.Fatalf("%s: no table inet masque_forward after the crash:\n%s", tc.name, rs)
		}
		path := filepath.Join(c.stateDir, "state.json")
		if b, err := os.ReadFile(path); err != nil || !strings.Contains(string(b), `"masque_forward"`) {
			t.Errorf("%s: the state file does not name masque_forward: %v\n%s", tc.name, err, b)
		}
		if tc.garbage != nil {
			if err := os.WriteFile(path, tc.garbage, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		r := runIn(t, tp.client, 20*time.Second, env.masque, "down", "--state-dir", c.stateDir)
		t.Logf("%s: masque down: exit %d\n%s", tc.name, r.code, r.stdout)
		if r.code != 0 {
			t.Errorf("%s: masque down: exit %d\n%s%s", tc.name, r.code, r.stdout, r.stderr)
		}
		if !tp.checkClean(tp.client) {
			t.Errorf("%s: the client namespace is not clean after masque down", tc.name)
		}
	}
}
