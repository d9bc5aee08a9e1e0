package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// checkPingFails checks that the target is unreachable from ns: the target
// has no route back, so without the tunnel nothing comes back.
func checkPingFails(t *testing.T, ns string) {
	t.Helper()
	for _, dst := range []string{targetIP4, targetIP6} {
		if r := ping(t, ns, dst, 2); r.received != 0 {
			t.Errorf("before the tunnel: ping %s from %s: %d of %d answered, want 0 (topology leaks)\n%s", dst, ns, r.received, r.sent, r.out)
		}
	}
}

// checkPing checks that every one of count pings from ns to the target is
// answered, over IPv4 and IPv6.
func checkPing(t *testing.T, ns string, count int) {
	t.Helper()
	for _, dst := range []string{targetIP4, targetIP6} {
		r := ping(t, ns, dst, count)
		if r.received != count {
			t.Errorf("through the tunnel: ping %s from %s: %d of %d answered (sent %d), want all\n%s", dst, ns, r.received, count, r.sent, r.out)
		} else {
			t.Logf("ping %s from %s: %d/%d, avg %.3f ms", dst, ns, r.received, count, r.avgMillis)
		}
	}
}

// TestPing: the target answers pings over IPv4 and IPv6 through the tunnel,
// and only through it; status and metrics agree.
func TestPing(t *testing.T) {
	tp := newTopo(t, false)
	srv := tp.startServer(t)
	checkPingFails(t, tp.client)
	if n := srv.sessions(t); n != 0 {
		t.Errorf("masque_tunnel_sessions = %v before any client, want 0", n)
	}

	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	t.Logf("%s", c.up.raw)
	checkPing(t, tp.client, 5)

	st := c.status(t)
	if st.State != "up" || st.Server != serverAddr || st.TUN != c.up.tun {
		t.Errorf("status = state %q server %q tun %q, want up %q %q", st.State, st.Server, st.TUN, serverAddr, c.up.tun)
	}
	for _, a := range c.up.addresses {
		if !containsStr(st.Addresses, a.String()) && !containsStr(st.Addresses, a.Addr().String()) {
			t.Errorf("status addresses %v lack %v from the up line", st.Addresses, a)
		}
	}
	// 10 echo requests went out and 10 replies came back.
	if st.TxPackets < 10 || st.RxPackets < 10 || st.TxBytes < 10*84 || st.RxBytes < 10*84 {
		t.Errorf("status counters tx %d pkts/%d B, rx %d pkts/%d B; want ≥ 10 packets and ≥ 840 B each way after 10 pings", st.TxPackets, st.TxBytes, st.RxPackets, st.RxBytes)
	}
	if !containsStr(st.Routes, "0.0.0.0/0") || !containsStr(st.Routes, "::/0") {
		t.Errorf("status routes = %v, want 0.0.0.0/0 and ::/0 for a full tunnel", st.Routes)
	}
	if st.UptimeSeconds <= 0 {
		t.Errorf("status uptime_seconds = %v, want > 0", st.UptimeSeconds)
	}
	if n := srv.sessions(t); n != 1 {
		t.Errorf("masque_tunnel_sessions = %v with one client, want 1", n)
	}
	// The server's TUN holds the first host of each default pool.
	addrs := mustRun(t, "ip", "-n", tp.server, "addr", "show", "dev", "masqued0")
	for _, want := range []string{"100.64.0.1/16", "fd6d:6173:7175:6500::1/64"} {
		if !strings.Contains(addrs, " "+want+" ") {
			t.Errorf("server TUN masqued0 lacks %s:\n%s", want, addrs)
		}
	}

	// The client's state while up differs from the initial one: this makes
	// the cleanliness check after the test meaningful.
	if st, err := snapshot(tp.client); err == nil && st.diff(tp.base[tp.client]) == "" {
		t.Errorf("client namespace looks untouched while the tunnel is up")
	}

	took, killed := c.stop(10 * time.Second)
	if killed || c.exitCode() != 0 {
		t.Errorf("masque up after SIGTERM: %s after %v (killed: %v), want exit 0", c.exitString(), took, killed)
	}
	tp.checkClean(tp.client)
	checkPingFails(t, tp.client)
}

// TestTCPTransfer: 200 MB of TCP over IPv4 and 50 MB over IPv6 (20/10 MB
// with -short) go client→target and arrive intact, compared by SHA-256 at
// both ends.
func TestTCPTransfer(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	tp.startClient(t, tp.client, tokenAuth("alice"))
	cases := []struct {
		name       string
		listen, to string
		size       int64
		peer       string // the source the target must see: the server's egress (NAT)
	}{
		{"IPv4", targetIP4 + ":9100", targetIP4 + ":9100", 200 << 20, egressIP4},
		{"IPv6", "[" + targetIP6 + "]:9101", "[" + targetIP6 + "]:9101", 50 << 20, "2001:db8:2::1"},
	}
	for _, tc := range cases {
		if testing.Short() {
			tc.size /= 10
		}
		sink := startTool(t, tp.target, "tcpsink", "-listen", tc.listen, "-timeout", "130s")
		send := runIn(t, tp.client, 130*time.Second, env.nettool, "tcpsend", "-to", tc.to, "-bytes", strconv.FormatInt(tc.size, 10), "-timeout", "120s")
		sent, got := checkTransfer(t, tc.name, send, sink, tc.size)
		if host, _, _ := net.SplitHostPort(got.Peer); host != tc.peer {
			t.Errorf("%s: target saw the connection from %s, want the server's egress address %s (NAT)", tc.name, got.Peer, tc.peer)
		}
		t.Logf("%s: %d MB in %.2f s: %.0f Mbit/s through the tunnel, SHA-256 equal: %v", tc.name, tc.size>>20, sent.Seconds, float64(tc.size)*8/sent.Seconds/1e6, got.SHA256 == sent.SHA256)
	}
}

// udpPingResult is nettool udpping's output.
type udpPingResult struct {
	Sent       int     `json:"sent"`
	Received   int     `json:"received"`
	Duplicates int     `json:"duplicates"`
	Corrupt    int     `json:"corrupt"`
	Foreign    int     `json:"foreign"`
	Seconds    float64 `json:"seconds"`
	Missing    string  `json:"missing"`
}

// udpExchange runs nettool udpping from ns and returns its result.
func udpExchange(ns, to, tag string, n, pps int) (udpPingResult, error) {
	r, err := runInErr(ns, 60*time.Second, env.nettool, "udpping", "-to", to, "-n", strconv.Itoa(n), "-pps", strconv.Itoa(pps), "-tag", tag)
	var res udpPingResult
	if err != nil {
		return res, err
	}
	if r.code != 0 {
		return res, fmt.Errorf("udpping %s from %s: exit %d: %s", to, ns, r.code, r.stderr)
	}
	lines := nonEmptyLines(r.stdout)
	if len(lines) == 0 {
		return res, fmt.Errorf("udpping %s from %s: no output", to, ns)
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		return res, fmt.Errorf("udpping %s from %s: %v", to, ns, err)
	}
	return res, nil
}

// checkUDP applies the loss budget: every datagram handed to the socket,
// at most 1% missing, none corrupt, duplicated or foreign. On failure it
// calls diag, if set, to log where the datagrams went.
func checkUDP(t *testing.T, what string, n int, r udpPingResult, diag func()) {
	t.Helper()
	if r.Sent != n || r.Received < n-n/100 || r.Corrupt != 0 || r.Duplicates != 0 || r.Foreign != 0 {
		if diag != nil {
			diag()
		}
		t.Errorf("%s: sent %d/%d, echoed byte-exact %d (want ≥ %d), corrupt %d, duplicates %d, foreign %d (want 0 each); missing seqs %s",
			what, r.Sent, n, r.Received, n-n/100, r.Corrupt, r.Duplicates, r.Foreign, r.Missing)
	} else {
		t.Logf("%s: %d/%d echoed byte-exact in %.2f s", what, r.Received, n, r.Seconds)
	}
}

// lossDiag returns a checkUDP diag that logs the kernel UDP counters of
// every namespace (socket-buffer drops at the ends are the harness's, not the
// tunnel's) and the server's drop counters.
func (tp *topo) lossDiag(t *testing.T, srv *server) func() {
	var once sync.Once
	return func() { once.Do(func() { tp.logLoss(t, srv) }) }
}

// logLoss does the work of lossDiag.
func (tp *topo) logLoss(t *testing.T, srv *server) {
	for _, ns := range tp.namespaces() {
		t.Logf("UDP counters in %s: %s", ns, udpCounters(ns))
	}
	if srv == nil {
		return
	}
	r, err := runInErr(srv.ns, 10*time.Second, env.nettool, "get", "-url", metricsURL)
	if err != nil || r.code != 0 {
		return
	}
	var drops []string
	for _, l := range strings.Split(r.stdout, "\n") {
		if strings.HasPrefix(l, "masque_") && !strings.HasSuffix(l, " 0") {
			drops = append(drops, l)
		}
	}
	t.Logf("server metrics (non-zero masque_*):\n%s", strings.Join(drops, "\n"))
}

// udpCounters returns the kernel's UDP error counters of ns.
func udpCounters(ns string) string {
	out, err := exec.Command("ip", "netns", "exec", ns, "cat", "/proc/net/snmp", "/proc/net/snmp6").Output()
	if err != nil {
		return err.Error()
	}
	var parts []string
	var header []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) > 1 && f[0] == "Udp:" && header == nil:
			header = f[1:]
		case len(f) > 1 && f[0] == "Udp:":
			for i, v := range f[1:] {
				if i < len(header) && strings.Contains(header[i], "Errors") || i < len(header) && header[i] == "InDatagrams" {
					parts = append(parts, "Udp"+header[i]+"="+v)
				}
			}
		case len(f) == 2 && strings.HasPrefix(f[0], "Udp6") && (strings.Contains(f[0], "Errors") || f[0] == "Udp6InDatagrams"):
			parts = append(parts, f[0]+"="+f[1])
		}
	}
	return strings.Join(parts, " ")
}

// TestUDPEcho: thousands of datagrams of varying size go to the target's
// echo server and come back byte-exact, over IPv4 and IPv6.
func TestUDPEcho(t *testing.T) {
	n := 3000
	if testing.Short() {
		n = 500
	}
	tp := newTopo(t, false)
	srv := tp.startServer(t)
	tp.startClient(t, tp.client, tokenAuth("alice"))
	startTool(t, tp.target, "udpecho", "-listen", ":9000")
	for _, to := range []string{targetIP4 + ":9000", "[" + targetIP6 + "]:9000"} {
		r, err := udpExchange(tp.client, to, "e", n, 2000)
		if err != nil {
			t.Fatal(err)
		}
		checkUDP(t, "UDP echo via "+to, n, r, tp.lossDiag(t, srv))
	}
}

// TestTwoClients: two clients at once get distinct addresses, and each one
// receives its own echoes and nobody else's.
func TestTwoClients(t *testing.T) {
	n := 2000
	if testing.Short() {
		n = 500
	}
	tp := newTopo(t, true)
	srv := tp.startServer(t)
	a := tp.startClient(t, tp.client, tokenAuth("alice"))
	b := tp.startClient(t, tp.client2, tokenAuth("bob"))
	t.Logf("client 1: %s", a.up.raw)
	t.Logf("client 2: %s", b.up.raw)
	if a.up.addr4() == b.up.addr4() || a.up.addr6() == b.up.addr6() {
		t.Errorf("both clients got %v / %v and %v / %v, want distinct addresses", a.up.addr4(), a.up.addr6(), b.up.addr4(), b.up.addr6())
	}
	if got := srv.sessions(t); got != 2 {
		t.Errorf("masque_tunnel_sessions = %v with two clients, want 2", got)
	}
	checkPing(t, tp.client, 3)
	checkPing(t, tp.client2, 3)

	startTool(t, tp.target, "udpecho", "-listen", ":9000")
	var wg sync.WaitGroup
	results := make([]udpPingResult, 4)
	errs := make([]error, 4)
	runs := []struct{ ns, to, tag string }{
		{tp.client, targetIP4 + ":9000", "A4"},
		{tp.client2, targetIP4 + ":9000", "B4"},
		{tp.client, "[" + targetIP6 + "]:9000", "A6"},
		{tp.client2, "[" + targetIP6 + "]:9000", "B6"},
	}
	// IPv4 of both clients concurrently, then IPv6 of both concurrently.
	for round := range 2 {
		for i := round * 2; i < round*2+2; i++ {
			wg.Go(func() {
				results[i], errs[i] = udpExchange(runs[i].ns, runs[i].to, runs[i].tag, n, 1500)
			})
		}
		wg.Wait()
	}
	for i, r := range runs {
		if errs[i] != nil {
			t.Error(errs[i])
			continue
		}
		checkUDP(t, fmt.Sprintf("client %s tag %s via %s", r.ns, r.tag, r.to), n, results[i], tp.lossDiag(t, srv))
	}
}

// TestWrongToken: a client with an unknown token is refused with one clear
// error line and leaves nothing behind.
func TestWrongToken(t *testing.T) {
	tp := newTopo(t, false)
	srv := tp.startServer(t)
	stateDir := t.TempDir()
	r := runIn(t, tp.client, 30*time.Second, clientArgv(stateDir, tokenAuth("wrong"))...)
	if r.code != 1 {
		t.Errorf("masque up with a wrong token: exit %d after %v, want 1\nstdout: %s\nstderr: %s", r.code, r.took, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout, "up:") {
		t.Errorf("masque up with a wrong token printed an up line: %s", r.stdout)
	}
	checkErrorLine(t, "wrong token", r.stderr, "masque: ", "refused", "401", "403", "unauthorized", "forbidden")
	t.Logf("wrong token: exit %d after %v: %s", r.code, r.took.Round(time.Millisecond), strings.TrimSpace(r.stderr))
	if strings.Contains(r.stderr, env.token["wrong"]) {
		t.Errorf("the error message reveals the token")
	}
	tp.checkClean(tp.client)
	if n := srv.sessions(t); n != 0 {
		t.Errorf("masque_tunnel_sessions = %v after a refused client, want 0", n)
	}
	if strings.Contains(srv.stderr.String(), env.token["wrong"]) {
		t.Errorf("masqued logged the presented token")
	}
}

// spoofResult is spoofclient's output.
type spoofResult struct {
	Assigned []string       `json:"assigned"`
	Routes   []string       `json:"routes"`
	Sent     map[string]int `json:"sent"`
	Dropped  map[string]int `json:"dropped"`
}

// TestSpoofedSource: the server forwards a session's packets only from the
// addresses it assigned to it; packets with another inner source address are
// dropped and counted, even when the client advertised routes covering them.
func TestSpoofedSource(t *testing.T) {
	const n = 200
	tp := newTopo(t, false)
	srv := tp.startServer(t)
	counter := startTool(t, tp.target, "udpcount", "-listen", ":9200", "-timeout", "90s")

	r := runIn(t, tp.client, 60*time.Second, env.spoofclient,
		"-server", serverAddr, "-ca", env.certDir+"/ca.crt", "-token", env.token["carol"],
		"-target4", targetIP4+":9200", "-target6", "["+targetIP6+"]:9200",
		"-spoof", "100.64.0.200,198.18.9.9,fd6d:6173:7175:6500::200,2001:db8:9::9",
		"-n", strconv.Itoa(n), "-interval", "500us")
	if r.code != 0 {
		t.Fatalf("spoofclient: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, tail(r.stderr, 3000))
	}
	var sr spoofResult
	lastJSON(t, "spoofclient", r.stdout, &sr)
	t.Logf("spoofclient: assigned %v, server routes %v, handed to WritePacket %v, dropped client-side %v", sr.Assigned, sr.Routes, sr.Sent, sr.Dropped)

	// Let the last datagrams land, then stop the counter.
	time.Sleep(500 * time.Millisecond)
	counter.stop(5 * time.Second)
	var cnt struct {
		Counts  map[string]int            `json:"counts"`
		Sources map[string]map[string]int `json:"sources"`
	}
	lastJSON(t, "udpcount", counter.stdout.String(), &cnt)
	t.Logf("target received per tag: %v from %v", cnt.Counts, cnt.Sources)

	if sr.Sent["good"] != n {
		t.Errorf("spoofclient sent %d good IPv4 datagrams, want %d", sr.Sent["good"], n)
	}
	if got := cnt.Counts["good"]; got < n-1 {
		t.Errorf("target received %d of %d datagrams from the assigned IPv4 address, want ≥ %d", got, n, n-1)
	}
	if sr.Sent["good6"] > 0 {
		if got := cnt.Counts["good6"]; got < sr.Sent["good6"]-1 {
			t.Errorf("target received %d of %d datagrams from the assigned IPv6 address, want ≥ %d", got, sr.Sent["good6"], sr.Sent["good6"]-1)
		}
	} else {
		t.Errorf("spoofclient sent no IPv6 datagrams from its assigned address (assigned %v, routes %v)", sr.Assigned, sr.Routes)
	}
	spoofSent := 0
	for i, src := range []string{"100.64.0.200", "198.18.9.9", "fd6d:6173:7175:6500::200", "2001:db8:9::9"} {
		tag := "spoof-" + strconv.Itoa(i)
		spoofSent += sr.Sent[tag]
		if sr.Sent[tag] != n {
			t.Errorf("spoofclient put %d datagrams from %s on the wire, want %d (else the test proves nothing)", sr.Sent[tag], src, n)
		}
		if got := cnt.Counts[tag]; got != 0 {
			t.Errorf("target received %d datagrams with spoofed inner source %s, want 0 (sources seen: %v)", got, src, cnt.Sources[tag])
		}
	}
	m := srv.metrics(t)
	v, ok := metricValue(m, "masque_tunnel_dropped_packets_total", `reason="source_spoof"`)
	switch {
	case !ok:
		t.Errorf("/metrics has no masque_tunnel_dropped_packets_total{reason=\"source_spoof\"}:\n%s", tail(m, 3000))
	case v < n:
		t.Errorf("masque_tunnel_dropped_packets_total{reason=\"source_spoof\"} = %v, want ≥ %d (%d spoofed datagrams sent)", v, n, spoofSent)
	default:
		t.Logf("source_spoof drops counted: %v of %d spoofed datagrams sent", v, spoofSent)
	}
}

// TestServerShutdown: SIGTERM makes masqued drain and exit 0 leaving no TUN
// or nftables table; a client told not to reconnect notices, says so and
// restores its host.
func TestServerShutdown(t *testing.T) {
	tp := newTopo(t, false)
	srv := tp.startServer(t)
	if tuns := tunLinks(t, tp.server); len(tuns) == 0 {
		t.Errorf("no TUN link in the server namespace while masqued runs")
	}
	// --reconnect=false: this is about the client noticing and restoring
	// its host; TestServerRestartReconnect covers staying up.
	c := tp.startClient(t, tp.client, tokenAuth("alice"), "--reconnect=false")
	checkPing(t, tp.client, 3)

	took, killed := srv.stop(15 * time.Second)
	if killed {
		t.Fatalf("masqued did not exit within 15 s of SIGTERM")
	}
	// The client does not move (it cannot, with --reconnect=false), so
	// its session lasts the whole drain after the GOAWAY.
	if code := srv.exitCode(); code != 0 || took < e2eDrain || took > e2eDrain+time.Second {
		t.Errorf("masqued after SIGTERM: %s after %v, want exit 0 after the %v drain and within 1 s more", srv.exitString(), took.Round(time.Millisecond), e2eDrain)
	} else {
		t.Logf("masqued exited 0 %v after SIGTERM", took.Round(time.Millisecond))
	}
	if tuns := tunLinks(t, tp.server); len(tuns) != 0 {
		t.Errorf("TUN links left in the server namespace: %v", tuns)
	}
	if r := runIn(t, tp.server, 5*time.Second, "nft", "list", "table", "inet", "masqued"); r.code == 0 {
		t.Errorf("nftables table inet masqued left behind:\n%s", r.stdout)
	}
	tp.checkClean(tp.server)
	// A clean SIGTERM, a client draining included, is lifecycle: nothing
	// at WARN or above.
	if bad := warnLines(srv.stderr.String()); len(bad) > 0 {
		t.Errorf("masqued logged at WARN or above on a clean SIGTERM:\n%s", strings.Join(bad, "\n"))
	}

	start := time.Now()
	if !c.wait(30 * time.Second) {
		t.Fatalf("masque up still running 30 s after the server exited")
	}
	t.Logf("client exited %v after the server: %s; stderr: %s", time.Since(start).Round(time.Millisecond), c.exitString(), strings.TrimSpace(tail(c.stderr.String(), 500)))
	if c.exitCode() == 0 {
		t.Errorf("masque up exited 0 after losing its server, want non-zero")
	}
	checkErrorLine(t, "client after server shutdown", lastLine(c.stderr.String()), "masque: ", "server", "connection", "closed", "lost", "timeout")
	tp.checkClean(tp.client)
}

// warnLines returns the lines of a text log at level WARN or ERROR.
func warnLines(log string) []string {
	var out []string
	for _, l := range nonEmptyLines(log) {
		if strings.Contains(l, " level=WARN ") || strings.Contains(l, " level=ERROR ") {
			out = append(out, l)
		}
	}
	return out
}

func lastLine(s string) string {
	lines := nonEmptyLines(s)
	if len(lines) == 0 {
		return ""
	}
	return lines[len(lines)-1]
}

// TestCrashRecovery: after "masque up" dies by SIGKILL, "masque down"
// restores the host, and running it again is harmless.
func TestCrashRecovery(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	c.signal(syscall.SIGKILL)
	if !c.wait(5 * time.Second) {
		t.Fatal("masque up survived SIGKILL")
	}
	if st, err := snapshot(tp.client); err == nil {
		t.Logf("left behind by the killed client:\n%s", st.diff(tp.base[tp.client]))
	}
	for i := range 2 {
		r := runIn(t, tp.client, 20*time.Second, env.masque, "down", "--state-dir", c.stateDir)
		if r.code != 0 {
			t.Errorf("masque down #%d: exit %d\nstdout: %s\nstderr: %s", i+1, r.code, r.stdout, r.stderr)
		}
	}
	tp.checkClean(tp.client)
}

// TestClientCertificate: a client authenticated by an mTLS certificate
// reaches the target.
func TestClientCertificate(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t, "--client-ca", env.certDir+"/ca.crt")
	tp.startClient(t, tp.client, certAuth("dave"))
	checkPing(t, tp.client, 3)
}

// TestUsageErrors: bad flags exit 2 with one error line, before touching the
// host.
func TestUsageErrors(t *testing.T) {
	tp := newTopo(t, false)
	r := runIn(t, tp.client, 20*time.Second, clientArgv(t.TempDir(), tokenAuth("alice"), "--route", "10.0.0.0/33")...)
	if r.code != 2 {
		t.Errorf("masque up --route 10.0.0.0/33: exit %d, want 2\nstderr: %s", r.code, r.stderr)
	}
	checkErrorLine(t, "masque up with a bad CIDR", r.stderr, "masque: ", "10.0.0.0/33")
	r = runIn(t, tp.server, 20*time.Second, env.masqued, "run", "--listen", serverAddr,
		"--cert", env.certDir+"/server.crt", "--key", env.certDir+"/server.key", "--tokens", env.tokens,
		"--state-dir", t.TempDir(), "--pool4", "100.64.0.0/99")
	if r.code != 2 {
		t.Errorf("masqued run --pool4 100.64.0.0/99: exit %d, want 2\nstderr: %s", r.code, r.stderr)
	}
	checkErrorLine(t, "masqued run with a bad pool", r.stderr, "masqued: ", "100.64.0.0/99")
	tp.checkClean(tp.client)
	tp.checkClean(tp.server)
}

// TestUnreachableServer: a server that never answers makes "masque up" give
// up with a timeout naming the address, leaving nothing behind.
func TestUnreachableServer(t *testing.T) {
	tp := newTopo(t, false)
	const addr = "198.18.1.99:4433" // on-link, but nobody has it
	stateDir := t.TempDir()
	argv := clientArgv(stateDir, tokenAuth("alice"))
	for i, a := range argv {
		if a == serverAddr {
			argv[i] = addr
		}
	}
	r := runIn(t, tp.client, 90*time.Second, argv...)
	t.Logf("unreachable server: exit %d after %v: %s", r.code, r.took.Round(time.Millisecond), strings.TrimSpace(r.stderr))
	if r.code != 1 {
		t.Errorf("masque up --server %s: exit %d after %v, want 1", addr, r.code, r.took)
	}
	checkErrorLine(t, "unreachable server", r.stderr, "masque: ", "timeout", "timed out")
	if !strings.Contains(r.stderr, addr) {
		t.Errorf("error does not name the address %s: %s", addr, r.stderr)
	}
	// If the message states the timeout, it is the one that applied.
	if m := regexp.MustCompile(`timeout after ([0-9.]+[a-z]+)`).FindStringSubmatch(r.stderr); m != nil {
		if d, err := time.ParseDuration(m[1]); err == nil && (r.took < d*9/10 || r.took > d+5*time.Second) {
			t.Errorf("error says %q but masque up gave up after %v", m[0], r.took.Round(time.Millisecond))
		}
	}
	tp.checkClean(tp.client)
}

// TestPlainPath checks the harness itself: with a temporary route back to
// the client subnet on the target, the plain routed path carries ping, UDP
// and TCP. A tunnel test failure is then the tunnel's, not the topology's.
func TestPlainPath(t *testing.T) {
	tp := newTopo(t, false)
	checkPingFails(t, tp.client)
	mustRun(t, "ip", "-n", tp.target, "route", "add", "198.18.1.0/24", "via", egressIP4)
	mustRun(t, "ip", "-n", tp.target, "-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:2::1")
	defer func() {
		mustRun(t, "ip", "-n", tp.target, "route", "del", "198.18.1.0/24", "via", egressIP4)
		mustRun(t, "ip", "-n", tp.target, "-6", "route", "del", "2001:db8:1::/64", "via", "2001:db8:2::1")
	}()
	checkPing(t, tp.client, 3)
	startTool(t, tp.target, "udpecho", "-listen", ":9000")
	for _, to := range []string{targetIP4 + ":9000", "[" + targetIP6 + "]:9000"} {
		r, err := udpExchange(tp.client, to, "p", 500, 5000)
		if err != nil {
			t.Fatal(err)
		}
		checkUDP(t, "plain UDP echo via "+to, 500, r, tp.lossDiag(t, nil))
	}
	sink := startTool(t, tp.target, "tcpsink", "-listen", targetIP4+":9100", "-timeout", "30s")
	send := runIn(t, tp.client, 30*time.Second, env.nettool, "tcpsend", "-to", targetIP4+":9100", "-bytes", "10000000")
	if send.code != 0 || !sink.wait(5*time.Second) {
		t.Fatalf("plain TCP: tcpsend exit %d: %s", send.code, send.stderr)
	}
	var a, b struct{ SHA256 string }
	lastJSON(t, "tcpsend", send.stdout, &a)
	lastJSON(t, "tcpsink", sink.stdout.String(), &b)
	if a.SHA256 != b.SHA256 || a.SHA256 == "" {
		t.Errorf("plain TCP: sink sha256 %q, sender %q", b.SHA256, a.SHA256)
	}
}

// linkMTU returns the MTU of dev in ns.
func linkMTU(t *testing.T, ns, dev string) int {
	t.Helper()
	out := mustRun(t, "ip", "-n", ns, "-o", "link", "show", "dev", dev)
	m := regexp.MustCompile(` mtu (\d+) `).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no mtu in %q", out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestMTU: right after "up", packets as large as the client's TUN MTU cross
// the tunnel in both directions without fragmentation, over IPv4 and IPv6
// (the TUN MTU follows the datagram budget), and an IPv6 packet of 1280
// bytes always does (RFC 9484 §10.1: the tunnel must carry the IPv6 minimum
// link MTU or abort).
func TestMTU(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	mtu := linkMTU(t, tp.client, c.up.tun)
	t.Logf("client TUN %s MTU %d, server TUN MTU %d", c.up.tun, mtu, linkMTU(t, tp.server, "masqued0"))
	if mtu < 1280 {
		t.Errorf("client TUN MTU %d < 1280: IPv6 cannot run over it (RFC 9484 §10.1)", mtu)
	}
	cases := []struct {
		name, dst string
		payload   int // ICMP payload: total size minus IP and ICMP headers
	}{
		{"IPv4 full TUN MTU", targetIP4, mtu - 28},
		{"IPv6 full TUN MTU", targetIP6, mtu - 48},
		{"IPv6 minimum MTU", targetIP6, 1280 - 48},
	}
	for _, tc := range cases {
		r := runIn(t, tp.client, 20*time.Second, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-M", "do", "-s", strconv.Itoa(tc.payload), tc.dst)
		m := pingCountRE.FindStringSubmatch(r.stdout)
		if m == nil || m[2] != "3" {
			t.Errorf("%s: ping -M do -s %d %s: want 3/3 answered\n%s%s", tc.name, tc.payload, tc.dst, r.stdout, r.stderr)
		} else {
			t.Logf("%s: %d-byte echo requests and replies crossed the tunnel", tc.name, tc.payload)
		}
	}
}

// TestSplitTunnel: --route limits the tunnel to the given prefixes and
// --exclude keeps a prefix out of a full tunnel.
func TestSplitTunnel(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)

	// Only the target's IPv4 address goes through the tunnel: its IPv6
	// address takes the plain path, where the target cannot answer.
	c := tp.startClient(t, tp.client, tokenAuth("alice"), "--route", targetIP4+"/32")
	if r := ping(t, tp.client, targetIP4, 3); r.received != 3 {
		t.Errorf("--route %s/32: ping %s: %d/3 answered, want 3\n%s", targetIP4, targetIP4, r.received, r.out)
	}
	if r := ping(t, tp.client, targetIP6, 2); r.received != 0 {
		t.Errorf("--route %s/32: ping %s: %d/2 answered, want 0 (not routed into the tunnel)", targetIP4, targetIP6, r.received)
	}
	if st := c.status(t); !containsStr(st.Routes, targetIP4+"/32") || containsStr(st.Routes, "0.0.0.0/0") {
		t.Errorf("--route %s/32: status routes %v", targetIP4, st.Routes)
	}
	if _, killed := c.stop(10 * time.Second); killed {
		t.Fatal("masque up ignored SIGTERM")
	}
	tp.checkClean(tp.client)

	// Full tunnel minus the target's IPv4 address.
	tp.startClient(t, tp.client, tokenAuth("alice"), "--exclude", targetIP4+"/32")
	if r := ping(t, tp.client, targetIP4, 2); r.received != 0 {
		t.Errorf("--exclude %s/32: ping %s: %d/2 answered, want 0 (excluded from the tunnel)", targetIP4, targetIP4, r.received)
	}
	if r := ping(t, tp.client, targetIP6, 3); r.received != 3 {
		t.Errorf("--exclude %s/32: ping %s: %d/3 answered, want 3\n%s", targetIP4, targetIP6, r.received, r.out)
	}
}

// TestNoLeak: with a full tunnel up, nothing but the tunnel's own QUIC flow
// (and neighbour discovery) leaves the client's physical interface while the
// client talks to the target over IPv4 and IPv6: TCP, UDP, DNS and ICMP.
func TestNoLeak(t *testing.T) {
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Fatal("tcpdump not installed (scripts/test.sh installs it)")
	}
	tp := newTopo(t, false)
	srv := tp.startServer(t)
	// Control: without the tunnel the same capture sees every kind of
	// probe.
	dump := startCapture(t, tp.client, leakFilter, false)
	probeOutside(t, tp.client, targetIP4, targetIP6)
	checkCaptureSeesAll(t, "control without the tunnel", stopCapture(dump))

	tp.startClient(t, tp.client, tokenAuth("alice"))
	dump = startCapture(t, tp.client, leakFilter, false)
	startTool(t, tp.target, "udpecho", "-listen", ":9000")
	checkPing(t, tp.client, 3)
	// TCP, UDP, DNS and ICMP to the target are all answered (a refusal
	// counts), through the tunnel.
	answered := probeOutside(t, tp.client, targetIP4, targetIP6)
	t.Logf("probes through the tunnel answered: %s", kindsString(answered))
	for _, k := range probeKinds {
		if answered[k] < 2 {
			t.Errorf("%d of 2 %s probes through the tunnel answered, want both", answered[k], k)
		}
	}
	for _, to := range []string{targetIP4 + ":9000", "[" + targetIP6 + "]:9000"} {
		r, err := udpExchange(tp.client, to, "L", 200, 1000)
		if err != nil {
			t.Fatal(err)
		}
		checkUDP(t, "UDP echo via "+to, 200, r, tp.lossDiag(t, srv))
	}
	time.Sleep(300 * time.Millisecond)
	dump.stop(5 * time.Second)
	if leaked := nonEmptyLines(dump.stdout.String()); len(leaked) > 0 {
		t.Errorf("%d packets left c0 outside the tunnel:\n%s", len(leaked), tail(strings.Join(leaked, "\n"), 3000))
	}
	if m := regexp.MustCompile(`(\d+) packets? captured`).FindStringSubmatch(dump.stderr.String()); m != nil {
		t.Logf("tcpdump: %s packets outside the tunnel's flow", m[1])
	}
}
