package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// server is a running masqued.
type server struct {
	*proc
	ns string
}

// e2eDrain is masqued's --drain-timeout in the tests unless one sets its own.
const e2eDrain = time.Second

// startServer starts masqued in the server namespace with the test PKI, the
// tokens file and metrics on 127.0.0.1:9090, and waits for msg=listening.
func (tp *topo) startServer(t *testing.T, extra ...string) *server {
	t.Helper()
	p := startProc(t, tp.server, "masqued", serverArgv(t, extra...)...)
	p.grace = 15 * time.Second // longer than any drain timeout the tests set
	p.wantExit0 = true
	if _, err := p.waitLine(p.stderr, 15*time.Second, func(l string) bool { return strings.Contains(l, "msg=listening") }); err != nil {
		t.Fatalf("masqued did not become ready: %v\nstderr:\n%s", err, tail(p.stderr.String(), 4000))
	}
	return &server{proc: p, ns: tp.server}
}

// serverArgv is the command line of startServer's masqued.
func serverArgv(t *testing.T, extra ...string) []string {
	argv := []string{env.masqued, "run",
		"--listen", serverAddr,
		"--cert", filepath.Join(env.certDir, "server.crt"),
		"--key", filepath.Join(env.certDir, "server.key"),
		"--tokens", env.tokens,
		"--egress", egressIf,
		"--state-dir", t.TempDir(),
		"--metrics", "127.0.0.1:9090",
		"--log-level", "debug",
		// A client still connected when a test stops masqued keeps its
		// session for the drain after the GOAWAY: keep that short (a
		// test's own --drain-timeout comes later and wins).
		"--drain-timeout", e2eDrain.String(),
	}
	return append(argv, extra...)
}

// metrics fetches the server's Prometheus text.
func (s *server) metrics(t *testing.T) string {
	t.Helper()
	r := runIn(t, s.ns, 10*time.Second, env.nettool, "get", "-url", metricsURL)
	if r.code != 0 {
		t.Fatalf("GET %s: exit %d: %s", metricsURL, r.code, r.stderr)
	}
	return r.stdout
}

// metricValue returns the value of the first sample of name whose labels
// contain every one of labels (each like `reason="source_spoof"`).
func metricValue(text, name string, labels ...string) (float64, bool) {
	for _, l := range strings.Split(text, "\n") {
		if !strings.HasPrefix(l, name) || len(l) == len(name) || (l[len(name)] != '{' && l[len(name)] != ' ') {
			continue
		}
		ok := true
		for _, lb := range labels {
			ok = ok && strings.Contains(l, lb)
		}
		if !ok {
			continue
		}
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			return v, true
		}
		// A timestamp may follow the value.
		if len(f) >= 2 {
			if v, err := strconv.ParseFloat(f[len(f)-2], 64); err == nil {
				return v, true
			}
		}
	}
	return 0, false
}

func (s *server) sessions(t *testing.T) float64 {
	t.Helper()
	m := s.metrics(t)
	v, ok := metricValue(m, "masque_tunnel_sessions")
	if !ok {
		t.Fatalf("no masque_tunnel_sessions in /metrics:\n%s", tail(m, 3000))
	}
	return v
}

// client is a running "masque up".
type client struct {
	*proc
	ns       string
	stateDir string
	up       upLine
}

// upLine is the parsed "up: server=… addresses=… tun=…" line.
type upLine struct {
	raw       string
	server    string
	addresses []netip.Prefix
	tun       string
}

func (u upLine) addr4() netip.Addr {
	for _, p := range u.addresses {
		if p.Addr().Is4() {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

func (u upLine) addr6() netip.Addr {
	for _, p := range u.addresses {
		if p.Addr().Is6() {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

func parseUpLine(l string) (upLine, error) {
	u := upLine{raw: l}
	rest, ok := strings.CutPrefix(l, "up: ")
	if !ok {
		return u, fmt.Errorf("not an up line: %q", l)
	}
	for _, f := range strings.Fields(rest) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "server":
			u.server = v
		case "tun":
			u.tun = v
		case "addresses":
			for _, s := range strings.Split(v, ",") {
				p, err := netip.ParsePrefix(s)
				if err != nil {
					return u, fmt.Errorf("up line %q: address %q: %v", l, s, err)
				}
				u.addresses = append(u.addresses, p)
			}
		}
	}
	if u.server == "" || u.tun == "" || len(u.addresses) == 0 {
		return u, fmt.Errorf("up line %q lacks server=, addresses= or tun=", l)
	}
	return u, nil
}

// tokenAuth and certAuth are the credential flags of "masque up".
func tokenAuth(identity string) []string { return []string{"--token-file", env.tokenFile[identity]} }

func certAuth(identity string) []string {
	return []string{"--cert", filepath.Join(env.certDir, identity+".crt"), "--key", filepath.Join(env.certDir, identity+".key")}
}

// clientArgv is "masque up" against the test server with the given
// credentials and a state directory of its own (/run is shared by all
// namespaces).
func clientArgv(stateDir string, auth []string, extra ...string) []string {
	argv := []string{env.masque, "up",
		"--ca", filepath.Join(env.certDir, "ca.crt"),
		"--state-dir", stateDir,
	}
	// --server is a list (masque up fails over between them): extra's,
	// if it names any, replace the test server.
	if !slices.Contains(extra, "--server") {
		argv = append(argv, "--server", serverAddr)
	}
	return append(append(argv, auth...), extra...)
}

// startClient runs "masque up" in ns and waits for its up line.
func (tp *topo) startClient(t *testing.T, ns string, auth []string, extra ...string) *client {
	t.Helper()
	stateDir := t.TempDir()
	return tp.startClientArgv(t, ns, stateDir, clientArgv(stateDir, auth, extra...))
}

func (tp *topo) startClientArgv(t *testing.T, ns, stateDir string, argv []string) *client {
	t.Helper()
	p := startProc(t, ns, "masque up in "+ns, argv...)
	p.grace = 10 * time.Second
	p.wantExit0 = true
	l, err := p.waitLine(p.stdout, 20*time.Second, func(l string) bool { return strings.HasPrefix(l, "up: ") })
	if err != nil {
		t.Fatalf("masque up: %v\nstdout:\n%s\nstderr:\n%s", err, p.stdout.String(), tail(p.stderr.String(), 4000))
	}
	u, err := parseUpLine(l)
	if err != nil {
		t.Fatal(err)
	}
	// --server is a list: the session is on one of them.
	var servers []string
	for i, a := range argv[:len(argv)-1] {
		if a == "--server" {
			servers = append(servers, argv[i+1])
		}
	}
	if len(servers) == 0 {
		servers = []string{serverAddr} // a profile's: the test server
	}
	if !slices.Contains(servers, u.server) {
		t.Errorf("up line server = %q, want one of %q", u.server, servers)
	}
	pool4 := netip.MustParsePrefix("100.64.0.0/16")
	pool6 := netip.MustParsePrefix("fd6d:6173:7175:6500::/64")
	if a := u.addr4(); !pool4.Contains(a) || a == netip.MustParseAddr("100.64.0.1") {
		t.Errorf("assigned IPv4 address %v is not a client address of the default pool %v (line %q)", a, pool4, l)
	}
	if a := u.addr6(); a.IsValid() && (!pool6.Contains(a) || a == netip.MustParseAddr("fd6d:6173:7175:6500::1")) {
		t.Errorf("assigned IPv6 address %v is not a client address of the default pool %v (line %q)", a, pool6, l)
	}
	if tuns := tunLinks(t, ns); !containsStr(tuns, u.tun) {
		t.Errorf("up line names tun=%s but the TUN links in %s are %v", u.tun, ns, tuns)
	}
	return &client{proc: p, ns: ns, stateDir: stateDir, up: u}
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// status is the JSON of "masque status --json".
type status struct {
	State         string            `json:"state"`
	Reconnects    int               `json:"reconnects"`
	Failovers     int               `json:"failovers"`
	KillSwitch    bool              `json:"kill_switch"`
	Server        string            `json:"server"`
	Addresses     []string          `json:"addresses"`
	Routes        []string          `json:"routes"`
	TUN           string            `json:"tun"`
	TxBytes       uint64            `json:"tx_bytes"`
	RxBytes       uint64            `json:"rx_bytes"`
	TxPackets     uint64            `json:"tx_packets"`
	RxPackets     uint64            `json:"rx_packets"`
	RTTMillis     float64           `json:"rtt_ms"`
	UptimeSeconds float64           `json:"uptime_seconds"`
	Drops         map[string]uint64 `json:"drops"`
	Refused       map[string]uint64 `json:"refused"`
}

func (c *client) status(t *testing.T) status {
	t.Helper()
	r := runIn(t, c.ns, 10*time.Second, env.masque, "status", "--json", "--state-dir", c.stateDir)
	if r.code != 0 {
		t.Fatalf("masque status --json: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	var st status
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	if err := dec.Decode(&st); err != nil {
		t.Fatalf("masque status --json: %v\noutput: %s", err, r.stdout)
	}
	return st
}

// pingResult is the outcome of ping(8).
type pingResult struct {
	sent, received int
	avgMillis      float64
	out            string
}

var (
	pingCountRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (packets )?received`)
	pingRTTRE   = regexp.MustCompile(`= [\d.]+/([\d.]+)/`)
)

// ping sends count echo requests from ns to addr, 0.2 s apart, each waiting
// at most 1 s.
func ping(t *testing.T, ns, addr string, count int) pingResult {
	t.Helper()
	deadline := strconv.Itoa(count/5 + 2)
	r := runIn(t, ns, 30*time.Second, "ping", "-n", "-c", strconv.Itoa(count), "-i", "0.2", "-W", "1", "-w", deadline, addr)
	pr := pingResult{out: r.stdout + r.stderr}
	if m := pingCountRE.FindStringSubmatch(r.stdout); m != nil {
		pr.sent, _ = strconv.Atoi(m[1])
		pr.received, _ = strconv.Atoi(m[2])
	}
	if m := pingRTTRE.FindStringSubmatch(r.stdout); m != nil {
		pr.avgMillis, _ = strconv.ParseFloat(m[1], 64)
	}
	return pr
}

// startTool starts a nettool server mode in ns and waits for "ready".
func startTool(t *testing.T, ns string, args ...string) *proc {
	t.Helper()
	p := startProc(t, ns, "nettool "+args[0], append([]string{env.nettool}, args...)...)
	if _, err := p.waitLine(p.stdout, 10*time.Second, func(l string) bool { return l == "ready" }); err != nil {
		t.Fatalf("nettool %s: %v\nstderr: %s", args[0], err, p.stderr.String())
	}
	return p
}

// lastJSON decodes the last line of out that starts with '{'.
func lastJSON(t *testing.T, what, out string, v any) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "{") {
			if err := json.Unmarshal([]byte(lines[i]), v); err != nil {
				t.Fatalf("%s: bad JSON %q: %v", what, lines[i], err)
			}
			return
		}
	}
	t.Fatalf("%s printed no JSON result; output:\n%s", what, out)
}

// nonEmptyLines returns the lines of s that are not blank.
func nonEmptyLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

// checkErrorLine checks the CLI error contract: stderr is one line that
// starts with prefix and contains one of wantAny (case-insensitive).
func checkErrorLine(t *testing.T, what, stderr, prefix string, wantAny ...string) {
	t.Helper()
	lines := nonEmptyLines(stderr)
	if len(lines) != 1 {
		t.Errorf("%s: stderr has %d lines, want exactly one error line:\n%s", what, len(lines), stderr)
	}
	if len(lines) == 0 {
		return
	}
	first := lines[0]
	if !strings.HasPrefix(first, prefix) {
		t.Errorf("%s: error line %q does not start with %q", what, first, prefix)
	}
	if len(wantAny) == 0 {
		return
	}
	low := strings.ToLower(strings.Join(lines, " "))
	for _, w := range wantAny {
		if strings.Contains(low, strings.ToLower(w)) {
			return
		}
	}
	t.Errorf("%s: error %q mentions none of %q", what, strings.Join(lines, " "), wantAny)
}

// tcpResult is what nettool tcpsend and tcpsink print.
type tcpResult struct {
	Bytes   int64   `json:"bytes"`
	SHA256  string  `json:"sha256"`
	Seconds float64 `json:"seconds"`
	Peer    string  `json:"peer"`
}

// checkTransfer checks a finished tcpsend run against its tcpsink: the
// sender exited 0 having sent size bytes, and the sink got exactly those
// (SHA-256 equal). It returns both results.
func checkTransfer(t *testing.T, what string, send result, sink *proc, size int64) (sent, got tcpResult) {
	t.Helper()
	if send.code != 0 {
		t.Fatalf("%s: tcpsend: exit %d after %v\nstdout: %s\nstderr: %s", what, send.code, send.took, send.stdout, send.stderr)
	}
	if !sink.wait(10 * time.Second) {
		t.Fatalf("%s: tcpsink did not finish after the sender did", what)
	}
	lastJSON(t, "tcpsend", send.stdout, &sent)
	lastJSON(t, "tcpsink", sink.stdout.String(), &got)
	if sent.Bytes != size || got.Bytes != sent.Bytes || got.SHA256 != sent.SHA256 {
		t.Errorf("%s: target received %d bytes sha256 %s, sender sent %d bytes sha256 %s (want %d bytes)", what, got.Bytes, got.SHA256, sent.Bytes, sent.SHA256, size)
	}
	return sent, got
}

// leakFilter is what must not leave the client's c0 while a tunnel is up:
// everything but the QUIC flow to the server and link-scope control
// traffic (ARP, IPv6 neighbour discovery, which may use global addresses,
// and MLD: link-local source, link-local multicast destination).
const leakFilter = "not (udp and host " + serverIP4 + " and port 4433) and not arp and " +
	"not (ip6 and (src net fe80::/10 or dst net ff02::/16 or (icmp6 and ip6[40] >= 133 and ip6[40] <= 137)))"

// startCapture runs tcpdump on c0 in ns with filter, on outgoing packets
// only if outOnly, and returns once it listens; its stdout has a line per
// packet.
func startCapture(t *testing.T, ns, filter string, outOnly bool) *proc {
	t.Helper()
	return startCaptureOn(t, ns, "c0", filter, outOnly)
}

// startCaptureOn is startCapture on the interface dev.
func startCaptureOn(t *testing.T, ns, dev, filter string, outOnly bool) *proc {
	t.Helper()
	argv := []string{"tcpdump", "-i", dev, "-n", "-l", "-U", "-p"}
	if outOnly {
		argv = append(argv, "-Q", "out")
	}
	dump := startProc(t, ns, "tcpdump", append(argv, filter)...)
	if _, err := dump.waitLine(dump.stderr, 10*time.Second, func(l string) bool { return strings.Contains(l, "listening on") }); err != nil {
		t.Fatalf("tcpdump: %v\n%s", err, dump.stderr.String())
	}
	return dump
}

// captureTimes returns when each of tcpdump's packet lines was captured
// (tcpdump prints the local time of day); ref is a moment after the
// capture, which gives the date.
func captureTimes(t *testing.T, lines []string, ref time.Time) []time.Time {
	t.Helper()
	var out []time.Time
	for _, l := range lines {
		f, _, _ := strings.Cut(l, " ")
		tod, err := time.ParseInLocation("15:04:05.000000", f, time.Local)
		if err != nil {
			t.Fatalf("tcpdump line without a time of day: %q", l)
		}
		ts := time.Date(ref.Year(), ref.Month(), ref.Day(), tod.Hour(), tod.Minute(), tod.Second(), tod.Nanosecond(), time.Local)
		if ts.After(ref.Add(time.Hour)) {
			ts = ts.AddDate(0, 0, -1) // captured before midnight
		}
		out = append(out, ts)
	}
	return out
}

// longestSilence returns the longest time in [from, to] without a packet
// of times (sorted), counting from from to the first packet and from the
// last one to to.
func longestSilence(times []time.Time, from, to time.Time) time.Duration {
	var longest time.Duration
	last := from
	for _, ts := range times {
		if ts.Before(from) || ts.After(to) {
			continue
		}
		longest = max(longest, ts.Sub(last))
		last = ts
	}
	return max(longest, to.Sub(last))
}

// nftInputDrop creates the table inet name in ns with an input chain whose
// one rule applies match (nft syntax ending in a verdict, e.g. "udp dport
// 4433 drop") and returns a function that deletes it; the test's cleanup
// calls it too.
func nftInputDrop(t *testing.T, ns, name, match string) (remove func()) {
	t.Helper()
	for _, cmd := range []string{
		"add table inet " + name,
		"add chain inet " + name + " in { type filter hook input priority -10 ; }",
		"add rule inet " + name + " in " + match,
	} {
		if r := runIn(t, ns, 10*time.Second, append([]string{"nft"}, strings.Fields(cmd)...)...); r.code != 0 {
			t.Fatalf("nft %s: %s", cmd, r.stderr)
		}
	}
	var once sync.Once
	remove = func() { once.Do(func() { runIn(t, ns, 10*time.Second, "nft", "delete", "table", "inet", name) }) }
	t.Cleanup(remove)
	return remove
}

// transfer is a paced TCP transfer between the client namespace and the
// target, running in the background (nettool tcpsend / tcpsink).
type transfer struct {
	peer *proc // the target's end
	done chan result
	size int64
}

// startTransfer sends size bytes at rate bytes a second between ns and the
// target's port: up (ns to the target) or down (the target to ns, with
// -reverse). It gives up after limit.
func startTransfer(t *testing.T, tp *topo, ns string, port int, size, rate int64, down bool, limit time.Duration) *transfer {
	t.Helper()
	addr := targetIP4 + ":" + strconv.Itoa(port)
	sinkArgs := []string{"tcpsink", "-listen", addr, "-timeout", (limit + 10*time.Second).String()}
	sendArgs := []string{env.nettool, "tcpsend", "-to", addr, "-timeout", limit.String()}
	pace := []string{"-bytes", strconv.FormatInt(size, 10), "-rate", strconv.FormatInt(rate, 10)}
	if down {
		sinkArgs = append(append(sinkArgs, "-reverse"), pace...)
		sendArgs = append(sendArgs, "-reverse")
	} else {
		sendArgs = append(sendArgs, pace...)
	}
	x := &transfer{peer: startTool(t, tp.target, sinkArgs...), done: make(chan result, 1), size: size}
	go func() {
		r, _ := runInErr(ns, limit+10*time.Second, sendArgs...)
		x.done <- r
	}()
	return x
}

// check waits for the transfer and checks it arrived whole (checkTransfer).
func (x *transfer) check(t *testing.T, what string) (sent, got tcpResult) {
	t.Helper()
	return checkTransfer(t, what, <-x.done, x.peer, x.size)
}
