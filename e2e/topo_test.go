package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Addresses of the topology (RFC 2544 benchmarking range and RFC 3849
// documentation prefix only).
const (
	clientIP4  = "198.18.1.1"
	serverIP4  = "198.18.1.2"
	egressIP4  = "198.18.2.1"
	targetIP4  = "198.18.2.2"
	client2IP4 = "198.18.3.1"
	targetIP6  = "2001:db8:2::2"
	serverAddr = serverIP4 + ":4433"
	egressIf   = "s1" // the server's interface toward the target
	metricsURL = "http://127.0.0.1:9090/metrics"
)

// topo is one test's namespaces: client —veth— server —veth— target, and
// optionally a second client on its own veth to the server.
type topo struct {
	t       *testing.T
	id      string
	client  string
	server  string
	target  string
	client2 string // "" unless requested

	base map[string]nsState // state of each namespace right after set-up
}

// newTopo creates the namespaces. Its Cleanup, which runs after the
// Cleanups of every process started later, checks that the namespaces are
// back to their set-up state, deletes them and checks that they are gone.
func newTopo(t *testing.T, secondClient bool) *topo {
	t.Helper()
	requireEnv(t)
	id := "mqe-" + randomHex(2)
	tp := &topo{t: t, id: id, client: id + "-c", server: id + "-s", target: id + "-t"}
	if secondClient {
		tp.client2 = id + "-c2"
	}
	nss := tp.namespaces()
	// Cleanups run last-in first-out: processes stop first, then teardown
	// checks and deletes the namespaces, then logProcs prints the output of
	// every process if anything failed.
	t.Cleanup(func() { logProcs(t) })
	t.Cleanup(func() { tp.teardown(nss) })
	for _, ns := range nss {
		created.Lock()
		created.names = append(created.names, ns)
		created.Unlock()
		mustRun(t, "ip", "netns", "add", ns)
	}

	for _, ns := range nss {
		// Addresses must be usable at once: no DAD on any interface created
		// from now on (set before the veths exist, so they inherit it).
		sysctl(t, ns, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
		mustRun(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	// The server routes between its interfaces like any VPN gateway.
	sysctl(t, tp.server, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	// No reverse-path filter on the target: a spoofed packet that the server
	// wrongly forwards must reach the counting sink, not vanish on the way.
	sysctl(t, tp.target, "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")

	mustRun(t, "ip", "-n", tp.client, "link", "add", "c0", "type", "veth", "peer", "name", "s0", "netns", tp.server)
	mustRun(t, "ip", "-n", tp.server, "link", "add", egressIf, "type", "veth", "peer", "name", "t0", "netns", tp.target)
	addrs := []struct{ ns, dev, a4, a6 string }{
		{tp.client, "c0", clientIP4 + "/24", "2001:db8:1::1/64"},
		{tp.server, "s0", serverIP4 + "/24", "2001:db8:1::2/64"},
		{tp.server, egressIf, egressIP4 + "/24", "2001:db8:2::1/64"},
		{tp.target, "t0", targetIP4 + "/24", targetIP6 + "/64"},
	}
	if tp.client2 != "" {
		mustRun(t, "ip", "-n", tp.client2, "link", "add", "c0", "type", "veth", "peer", "name", "s2", "netns", tp.server)
		addrs = append(addrs,
			struct{ ns, dev, a4, a6 string }{tp.client2, "c0", client2IP4 + "/24", "2001:db8:3::1/64"},
			struct{ ns, dev, a4, a6 string }{tp.server, "s2", "198.18.3.2/24", "2001:db8:3::2/64"})
	}
	for _, a := range addrs {
		mustRun(t, "ip", "-n", a.ns, "addr", "add", a.a4, "dev", a.dev)
		mustRun(t, "ip", "-n", a.ns, "addr", "add", a.a6, "dev", a.dev, "nodad")
		mustRun(t, "ip", "-n", a.ns, "link", "set", a.dev, "up")
	}
	mustRun(t, "ip", "-n", tp.client, "route", "add", "default", "via", serverIP4)
	mustRun(t, "ip", "-n", tp.client, "-6", "route", "add", "default", "via", "2001:db8:1::2")
	if tp.client2 != "" {
		mustRun(t, "ip", "-n", tp.client2, "route", "add", "default", "via", "198.18.3.2")
		mustRun(t, "ip", "-n", tp.client2, "-6", "route", "add", "default", "via", "2001:db8:3::2")
	}
	// The target deliberately has no route to 198.18.1.0/24 or 2001:db8:1::/64.

	tp.base = map[string]nsState{}
	for _, ns := range nss {
		tp.base[ns] = settle(t, ns)
	}
	return tp
}

// settle waits until ns has finished configuring itself (every link has
// its IPv6 link-local address, which brings kernel routes with it; two
// snapshots in a row agree) and returns its state.
func settle(t *testing.T, ns string) nsState {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var prev nsState
	for {
		st, err := snapshot(ns)
		if err != nil {
			t.Fatal(err)
		}
		addrs, err := exec.Command("ip", "-n", ns, "-6", "-o", "addr", "show", "scope", "link").Output()
		if err != nil {
			t.Fatal(err)
		}
		ready := !strings.Contains(string(addrs), "tentative")
		for _, l := range st.aspects["links"] {
			ready = ready && (l == "lo" || strings.Contains(string(addrs), " "+l+" "))
		}
		if ready && prev.aspects != nil && st.diff(prev) == "" {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("namespace %s did not settle within 5 s; link-local addresses:\n%s", ns, addrs)
		}
		prev = st
		time.Sleep(100 * time.Millisecond)
	}
}

func (tp *topo) namespaces() []string {
	nss := []string{tp.client, tp.server, tp.target}
	if tp.client2 != "" {
		nss = append(nss, tp.client2)
	}
	return nss
}

func sysctl(t *testing.T, ns string, kv ...string) {
	t.Helper()
	mustRun(t, "ip", append([]string{"netns", "exec", ns, "sysctl", "-qw"}, kv...)...)
}

func (tp *topo) teardown(nss []string) {
	t := tp.t
	if tp.base != nil {
		for _, ns := range []string{tp.client, tp.client2, tp.server} {
			if ns != "" {
				tp.checkClean(ns)
			}
		}
	}
	for _, ns := range nss {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	}
	if left := existingNamespaces(nss); len(left) > 0 {
		t.Errorf("namespaces still exist after the test: %v", left)
	}
}

// existingNamespaces returns those of names that ip netns list shows.
func existingNamespaces(names []string) []string {
	out, _ := exec.Command("ip", "netns", "list").Output()
	var left []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && slices.Contains(names, f[0]) {
			left = append(left, f[0])
		}
	}
	return left
}

// nsState is what a namespace's network configuration looks like, as
// sorted lines per aspect.
type nsState struct {
	aspects map[string][]string
}

var stateCommands = []struct {
	aspect string
	argv   func(ns string) []string
}{
	{"links", func(ns string) []string { return []string{"ip", "-n", ns, "-o", "link", "show"} }},
	{"tun links", func(ns string) []string { return []string{"ip", "-n", ns, "-o", "link", "show", "type", "tun"} }},
	{"IPv4 rules", func(ns string) []string { return []string{"ip", "-n", ns, "-4", "rule", "show"} }},
	{"IPv6 rules", func(ns string) []string { return []string{"ip", "-n", ns, "-6", "rule", "show"} }},
	{"IPv4 routes (all tables)", func(ns string) []string { return []string{"ip", "-n", ns, "-4", "route", "show", "table", "all"} }},
	{"IPv6 routes (all tables)", func(ns string) []string { return []string{"ip", "-n", ns, "-6", "route", "show", "table", "all"} }},
	// The whole ruleset, not just the table names: after a crash and masque
	// down it must equal what it was before masque up, chain for chain and
	// rule for rule.
	{"nftables ruleset", func(ns string) []string { return []string{"ip", "netns", "exec", ns, "nft", "list", "ruleset"} }},
}

func snapshot(ns string) (nsState, error) {
	st := nsState{aspects: map[string][]string{}}
	for _, c := range stateCommands {
		argv := c.argv(ns)
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			return st, fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, out)
		}
		var lines []string
		for _, l := range strings.Split(string(out), "\n") {
			l = strings.TrimSpace(l)
			if l == "" {
				continue
			}
			if c.aspect == "links" || c.aspect == "tun links" {
				// "3: masque0: <POINTOPOINT,...> mtu ..." → "masque0";
				// flags and counters legitimately change.
				if f := strings.Fields(l); len(f) > 1 {
					l = strings.TrimSuffix(f[1], ":")
					l, _, _ = strings.Cut(l, "@")
				}
			}
			lines = append(lines, l)
		}
		slices.Sort(lines)
		st.aspects[c.aspect] = lines
	}
	return st, nil
}

// diff describes how st differs from base, "" if it does not. Lines
// count as often as they occur: a ruleset repeats its "}" lines.
func (st nsState) diff(base nsState) string {
	var b strings.Builder
	for _, c := range stateCommands {
		got, want := st.aspects[c.aspect], base.aspects[c.aspect]
		added, removed := lineDiff(got, want), lineDiff(want, got)
		if len(added)+len(removed) == 0 {
			continue
		}
		fmt.Fprintf(&b, "  %s:\n", c.aspect)
		for _, l := range added {
			fmt.Fprintf(&b, "    + %s\n", l)
		}
		for _, l := range removed {
			fmt.Fprintf(&b, "    - %s\n", l)
		}
	}
	return b.String()
}

// lineDiff returns the lines of a that b lacks, each as often as a has it
// more often than b.
func lineDiff(a, b []string) []string {
	n := map[string]int{}
	for _, l := range b {
		n[l]++
	}
	var out []string
	for _, l := range a {
		if n[l] > 0 {
			n[l]--
			continue
		}
		out = append(out, l)
	}
	return out
}

// checkClean reports (t.Errorf) every link, rule, route and nftables line in
// ns that differs from the state right after set-up, and reports whether ns
// was clean.
func (tp *topo) checkClean(ns string) bool {
	tp.t.Helper()
	st, err := snapshot(ns)
	if err != nil {
		tp.t.Errorf("snapshot %s: %v", ns, err)
		return false
	}
	if d := st.diff(tp.base[ns]); d != "" {
		tp.t.Errorf("namespace %s is not back to its initial state (+ left behind, - missing):\n%s", ns, d)
		return false
	}
	// Nor may an instance's claim of a slot outlive what it claimed.
	if claims := nsClaims(ns); len(claims) > 0 {
		tp.t.Errorf("namespace %s: instance claims left in %s: %v", ns, registryDir, claims)
		return false
	}
	return true
}

// registryDir is masque up's instance registry (tun.DefaultRegistryDir).
const registryDir = "/run/masque/instances"

// nsClaims returns the claim files of namespace ns in the registry:
// <netns inode>.<slot>.json.
func nsClaims(ns string) []string {
	var st syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+ns, &st); err != nil {
		return nil
	}
	files, _ := filepath.Glob(filepath.Join(registryDir, fmt.Sprintf("%d.*.json", st.Ino)))
	return files
}

// tunLinks returns the names of the TUN links in ns.
func tunLinks(t *testing.T, ns string) []string {
	t.Helper()
	st, err := snapshot(ns)
	if err != nil {
		t.Fatal(err)
	}
	return st.aspects["tun links"]
}
