package e2e

// Bounded memory (issue 7): after session churn, many sessions at once, a
// UDP flood through a tunnel and CONNECT-UDP flows closed on idle,
// masqued's resident memory, goroutines, open file descriptors and address
// leases are back at their baseline, within leak bounds.

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Leak bounds: how far above its baseline a resource may stay once the
// load is gone. They detect leaks (a goroutine, socket or buffer per
// session or flow would exceed them many times over), they do not measure
// performance. The RSS bound leaves room for the Go runtime keeping freed
// heap pages until its scavenger returns them; the heap, measured right
// after a forced GC, is the tighter signal.
const (
	heapMargin      = 5 << 20
	goroutineMargin = 10
	fdMargin        = 5
)

// rssMargin is the RSS bound. When the daemons carry the race detector
// (MASQUE_E2E_RACE=1) RSS is only logged: the detector's shadow memory and
// per-goroutine state, hundreds of MB after 200 sessions, are never returned
// to the OS. The heap bound still applies then.
var rssMargin = func() int64 {
	if os.Getenv("MASQUE_E2E_RACE") == "1" {
		return math.MaxInt64
	}
	return 20 << 20
}()

// usage is a snapshot of masqued's resources.
type usage struct {
	rss        int64   // VmRSS from /proc/PID/status, bytes
	heap       float64 // go_memstats_heap_inuse_bytes right after a forced GC
	goroutines int     // go_goroutines
	fds        int     // entries of /proc/PID/fd
	sessions   int     // masque_tunnel_sessions
	inUse4     int     // masque_pool_addresses_in_use{family="ipv4"}
	inUse6     int     // masque_pool_addresses_in_use{family="ipv6"}
	reserved4  int     // masque_pool_addresses_reserved{family="ipv4"}
	udpFlows   int     // masque_udp_flows
	metrics    string  // the /metrics text of the sample
}

func (u usage) String() string {
	return fmt.Sprintf("RSS %.1f MB, heap in use %.1f MB, %d goroutines, %d fds, %d sessions, leases in use %d IPv4 / %d IPv6 (%d IPv4 reserved), %d UDP flows",
		float64(u.rss)/(1<<20), u.heap/(1<<20), u.goroutines, u.fds, u.sessions, u.inUse4, u.inUse6, u.reserved4, u.udpFlows)
}

// excess lists every leak bound that u exceeds relative to base: RSS,
// goroutines and fds within their margins, and sessions, leases in use and
// UDP flows exactly back. It returns "" when u is back at base.
func (u usage) excess(base usage) string {
	var out []string
	if d := u.rss - base.rss; d > rssMargin {
		out = append(out, fmt.Sprintf("RSS %+.1f MB (bound +%d MB)", float64(d)/(1<<20), rssMargin>>20))
	}
	if d := u.heap - base.heap; d > heapMargin {
		out = append(out, fmt.Sprintf("heap in use %+.1f MB (bound +%d MB)", d/(1<<20), heapMargin>>20))
	}
	if d := u.goroutines - base.goroutines; d > goroutineMargin {
		out = append(out, fmt.Sprintf("goroutines %+d (bound +%d)", d, goroutineMargin))
	}
	if d := u.fds - base.fds; d > fdMargin {
		out = append(out, fmt.Sprintf("fds %+d (bound +%d)", d, fdMargin))
	}
	for _, c := range []struct {
		what      string
		got, want int
	}{
		{"sessions", u.sessions, base.sessions},
		{"IPv4 leases in use", u.inUse4, base.inUse4},
		{"IPv6 leases in use", u.inUse6, base.inUse6},
		{"UDP flows", u.udpFlows, base.udpFlows},
	} {
		if c.got != c.want {
			out = append(out, fmt.Sprintf("%s %d (baseline %d)", c.what, c.got, c.want))
		}
	}
	return strings.Join(out, "; ")
}

// monitor samples masqued's resources: RSS and fds from /proc, the rest
// from its metrics listener over one kept-alive connection opened in the
// server namespace, so that the monitor itself adds a constant fd and
// goroutine to masqued rather than a varying number.
type monitor struct {
	pid    int
	client *http.Client
}

// newMonitor returns a monitor of srv, which must run with --pprof (the
// monitor forces a GC before each sample).
func newMonitor(t *testing.T, srv *server) *monitor {
	t.Helper()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := inNetns(srv.ns, func() error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
		MaxIdleConnsPerHost: 1,
		MaxConnsPerHost:     1,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &monitor{pid: srv.cmd.Process.Pid, client: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

func (m *monitor) get(path string) (string, error) {
	resp, err := m.client.Get("http://127.0.0.1:9090" + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return string(b), nil
}

// sample forces a GC in masqued (a heap profile with gc=1), then reads its
// metrics and /proc.
func (m *monitor) sample(t *testing.T) usage {
	t.Helper()
	if _, err := m.get("/debug/pprof/heap?gc=1"); err != nil {
		t.Fatalf("force a GC in masqued: %v", err)
	}
	text, err := m.get("/metrics")
	if err != nil {
		t.Fatalf("masqued metrics: %v", err)
	}
	u := usage{metrics: text}
	need := func(name string, labels ...string) float64 {
		v, ok := metricValue(text, name, labels...)
		if !ok {
			t.Fatalf("no %s%v in /metrics:\n%s", name, labels, tail(text, 3000))
		}
		return v
	}
	u.heap = need("go_memstats_heap_inuse_bytes")
	u.goroutines = int(need("go_goroutines"))
	u.sessions = int(need("masque_tunnel_sessions"))
	u.inUse4 = int(need("masque_pool_addresses_in_use", `family="ipv4"`))
	u.inUse6 = int(need("masque_pool_addresses_in_use", `family="ipv6"`))
	u.reserved4 = int(need("masque_pool_addresses_reserved", `family="ipv4"`))
	u.udpFlows = int(need("masque_udp_flows"))

	if u.rss, err = vmRSS(m.pid); err != nil {
		t.Fatalf("masqued: %v", err)
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", m.pid))
	if err != nil {
		t.Fatalf("masqued fds: %v", err)
	}
	u.fds = len(fds)
	return u
}

// vmRSS returns the resident memory of process pid (VmRSS), in bytes.
func vmRSS(pid int) (int64, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(rest)
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil || len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("VmRSS line %q", l)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// baseline samples every 250 ms until masqued is steady (two samples in a
// row agree on goroutines, fds, sessions and leases, and their heaps
// differ by less than 1 MB), at least three times so that the forced GCs
// have emptied the buffer pools (sync.Pool keeps objects for one GC more),
// for at most 10 s.
func (m *monitor) baseline(t *testing.T) usage {
	t.Helper()
	start := time.Now()
	prev := m.sample(t)
	for n := 1; ; n++ {
		time.Sleep(250 * time.Millisecond)
		u := m.sample(t)
		steady := u.goroutines == prev.goroutines && u.fds == prev.fds && u.sessions == prev.sessions &&
			u.inUse4 == prev.inUse4 && u.inUse6 == prev.inUse6 && u.udpFlows == prev.udpFlows &&
			u.heap-prev.heap < 1<<20 && prev.heap-u.heap < 1<<20
		if steady && n >= 2 || time.Since(start) > 10*time.Second {
			return u
		}
		prev = u
	}
}

// settle samples every 250 ms until masqued is back at base (usage.excess)
// or d has passed, and returns the last sample and how long it took. The
// caller reports what is still in excess.
func (m *monitor) settle(t *testing.T, base usage, d time.Duration) (usage, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		u := m.sample(t)
		if u.excess(base) == "" || time.Since(start) > d {
			return u, time.Since(start)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// checkBack settles and fails t for every bound that masqued still exceeds
// d after the load ended.
func (m *monitor) checkBack(t *testing.T, what string, base usage, d time.Duration) usage {
	t.Helper()
	u, took := m.settle(t, base, d)
	t.Logf("%s: after %v: %v", what, took.Round(10*time.Millisecond), u)
	t.Logf("%s: change from baseline: RSS %+.1f MB, heap %+.1f MB, goroutines %+d, fds %+d",
		what, float64(u.rss-base.rss)/(1<<20), (u.heap-base.heap)/(1<<20), u.goroutines-base.goroutines, u.fds-base.fds)
	if e := u.excess(base); e != "" {
		t.Errorf("%s: masqued still above its baseline after %v: %s", what, took.Round(10*time.Millisecond), e)
		if g, err := m.get("/debug/pprof/goroutine?debug=1"); err == nil {
			t.Logf("masqued's goroutines:\n%s", tail(g, 6000))
		}
	}
	return u
}

// loadClientAddrs gives the client namespace n more addresses on c0
// (198.18.1.10 on) for connectload's -local, since masqued caps
// connections per source address, and returns them as a range. Its
// Cleanup removes them before the topology checks the namespace.
func loadClientAddrs(t *testing.T, tp *topo, n int) string {
	t.Helper()
	return addClientAddrs(t, tp, netip.MustParseAddr("198.18.1.10"), n)
}

// addClientAddrs is loadClientAddrs from first on, IPv4 or IPv6 (inside
// the client's 198.18.1.0/24 or 2001:db8:1::/64).
func addClientAddrs(t *testing.T, tp *topo, first netip.Addr, n int) string {
	t.Helper()
	last := first
	for a := first; n > 0; a, n = a.Next(), n-1 {
		p := netip.PrefixFrom(a, a.BitLen()).String()
		args := []string{"-n", tp.client, "addr", "add", p, "dev", "c0"}
		if a.Is6() {
			args = append(args, "nodad")
		}
		mustRun(t, "ip", args...)
		t.Cleanup(func() { mustRun(t, "ip", "-n", tp.client, "addr", "del", p, "dev", "c0") })
		last = a
	}
	return first.String() + "-" + last.String()
}

// churn runs connectload -mode churn from the local addresses for n
// sessions with c workers, and fails t unless all n were established.
func churn(t *testing.T, tp *topo, local string, n, c int) loadReport {
	t.Helper()
	rep := runLoad(t, tp.client, 60*time.Second, "-local", local, "-mode", "churn",
		"-n", strconv.Itoa(n), "-c", strconv.Itoa(c), "-duration", "45s")
	if rep.OK != int64(n) || rep.Failed != 0 {
		t.Fatalf("connectload churn: %d sessions established, %d failed (%v), want %d and 0", rep.OK, rep.Failed, rep.Errors, n)
	}
	return rep
}

// TestMemoryChurn: 1,000 CONNECT-IP sessions opened and closed, each a QUIC
// connection with a full handshake, leave masqued's RSS, goroutines, fds and
// leases at their baseline.
func TestMemoryChurn(t *testing.T) {
	const n, workers = 1000, 16
	tp := newTopo(t, false)
	local := loadClientAddrs(t, tp, 4)
	// All sessions are alice's: allow her the workers' sessions plus those
	// whose close the server has not processed yet.
	srv := tp.startServer(t, "--pprof", "--max-sessions-per-identity", strconv.Itoa(4*workers))
	mon := newMonitor(t, srv)

	// Warm-up at the same concurrency fills the buffer pools and caches a
	// steady state keeps; the baseline is taken after it.
	churn(t, tp, local, 2*workers, workers)
	base := mon.baseline(t)
	t.Logf("baseline after %d warm-up sessions: %v", 2*workers, base)
	if base.sessions != 0 || base.inUse4 != 0 || base.inUse6 != 0 {
		t.Fatalf("warm-up sessions still open at the baseline: %v", base)
	}

	rep := churn(t, tp, local, n, workers)
	t.Logf("churn: %d sessions opened and closed in %.1f s (%.0f/s, set-up p50 %.1f ms, p99 %.1f ms)", rep.OK, rep.Seconds, rep.Rate, rep.P50ms, rep.P99ms)
	after := mon.checkBack(t, "after 1,000 connect/disconnect cycles", base, 30*time.Second)
	if total := metricOr0(after.metrics, "masque_tunnel_sessions_total"); total != float64(n+2*workers) {
		t.Errorf("masque_tunnel_sessions_total = %v, want %d (warm-up and churn)", total, n+2*workers)
	}
	// One identity's released addresses stay reserved for it and are
	// reused: the reserved count follows its peak concurrency on the server
	// (the client's workers, plus sessions whose close the server has not
	// processed yet when the next one arrives), not the number of sessions.
	if after.reserved4 > 4*workers {
		t.Errorf("%d IPv4 addresses reserved after %d sessions of one identity with %d at once, want ≤ %d", after.reserved4, n, workers, 4*workers)
	}
}

// TestMemoryManySessions: 200 CONNECT-IP sessions held at once are counted
// and hold 200 leases of each family; once they close, masqued's RSS,
// goroutines, fds and leases are back at their baseline.
func TestMemoryManySessions(t *testing.T) {
	const n, workers = 200, 16
	tp := newTopo(t, false)
	// At most 25 connections per source, well under the per-source cap.
	local := loadClientAddrs(t, tp, 8)
	srv := tp.startServer(t, "--pprof", "--max-sessions-per-identity", strconv.Itoa(n))
	mon := newMonitor(t, srv)

	churn(t, tp, local, 2*workers, workers)
	base := mon.baseline(t)
	t.Logf("baseline after %d warm-up sessions: %v", 2*workers, base)

	load := startProc(t, tp.client, "connectload idle", connectloadArgs("-local", local, "-mode", "idle",
		"-n", strconv.Itoa(n), "-c", strconv.Itoa(workers), "-duration", "50s")...)
	load.grace = 15 * time.Second
	line, err := load.waitLine(load.stdout, 40*time.Second, func(l string) bool { return strings.Contains(l, `"event":"ready"`) })
	if err != nil {
		t.Fatalf("connectload idle: %v\nstderr: %s", err, tail(load.stderr.String(), 3000))
	}
	var ready loadReport
	lastJSON(t, "connectload ready", line, &ready)
	if ready.OK != n || ready.Failed != 0 {
		t.Fatalf("connectload idle: %d sessions established, %d failed (%v), want %d and 0", ready.OK, ready.Failed, ready.Errors, n)
	}
	t.Logf("%d sessions established in %.1f s (set-up p50 %.1f ms, p99 %.1f ms)", ready.OK, ready.Seconds, ready.P50ms, ready.P99ms)

	held := mon.sample(t)
	t.Logf("holding %d sessions: %v", n, held)
	t.Logf("per session: RSS %.1f kB, heap %.1f kB, %.2f goroutines, %.2f fds",
		float64(held.rss-base.rss)/n/1024, (held.heap-base.heap)/n/1024, float64(held.goroutines-base.goroutines)/n, float64(held.fds-base.fds)/n)
	if held.sessions != base.sessions+n || held.inUse4 != base.inUse4+n || held.inUse6 != base.inUse6+n {
		t.Errorf("holding %d sessions: masque_tunnel_sessions %d, leases in use %d IPv4 / %d IPv6; want %d each", n, held.sessions, held.inUse4, held.inUse6, n)
	}

	load.stop(load.grace)
	var done loadReport
	lastJSON(t, "connectload done", load.stdout.String(), &done)
	if load.exitCode() != 0 || done.Event != "done" || done.Open != n {
		t.Errorf("connectload idle: exit %s, %d of %d sessions still open when it closed them (%+v)", load.exitString(), done.Open, n, done)
	}
	mon.checkBack(t, "after 200 sessions at once closed", base, 30*time.Second)
}

// udpFloodTarget is one destination of the UDP flood.
type udpFloodTarget struct {
	name string
	to   netip.AddrPort
	tag  string
	sent int
	errs int
}

// udpFlood sends datagrams from sock round-robin to targets as fast as it
// can, for d or until max datagrams, and returns how many it sent.
func udpFlood(sock *net.UDPConn, targets []*udpFloodTarget, d time.Duration, max int) int {
	bufs := make([][]byte, len(targets))
	for i, ft := range targets {
		bufs[i] = make([]byte, 512)
		copy(bufs[i], ft.tag+"|")
	}
	deadline := time.Now().Add(d)
	total := 0
	for total < max && (total%1024 != 0 || time.Now().Before(deadline)) {
		i := total % len(targets)
		ft := targets[i]
		if _, err := sock.WriteToUDPAddrPort(bufs[i], ft.to); err != nil {
			ft.errs++
		} else {
			ft.sent++
		}
		total++
	}
	return total
}

// TestMemoryUDPFlood: a UDP flood through a CONNECT-IP tunnel, to a sink,
// to a closed port and to destinations the policy denies, leaves masqued's
// RSS, goroutines and fds at their baseline, and the tunnel still works.
func TestMemoryUDPFlood(t *testing.T) {
	const (
		floodFor = 5 * time.Second
		floodMax = 1_000_000
	)
	tp := newTopo(t, false)
	srv := tp.startServer(t, "--pprof")
	mon := newMonitor(t, srv)
	sink := startTool(t, tp.target, "udpcount", "-listen", ":9200", "-timeout", "90s")
	tp.startClient(t, tp.client, tokenAuth("alice"))
	sock := listenUDPIn(t, tp.client, ":0")
	floodTargets := func(tagPrefix string) []*udpFloodTarget {
		return []*udpFloodTarget{
			{name: "sink IPv4", to: netip.MustParseAddrPort(targetIP4 + ":9200"), tag: tagPrefix + "sink4"},
			{name: "sink IPv6", to: netip.MustParseAddrPort("[" + targetIP6 + "]:9200"), tag: tagPrefix + "sink6"},
			{name: "closed port", to: netip.MustParseAddrPort(targetIP4 + ":9201"), tag: tagPrefix + "closed"},
			{name: "denied: the server's address", to: netip.MustParseAddrPort(egressIP4 + ":9"), tag: tagPrefix + "denied-server"},
			{name: "denied: metadata", to: netip.MustParseAddrPort("169.254.169.254:80"), tag: tagPrefix + "denied-meta"},
		}
	}

	// Warm-up: a short flood of the same mix (its own tags), so that what
	// the data path sets up on first use exists at the baseline.
	udpFlood(sock, floodTargets("warm-"), 500*time.Millisecond, 20_000)
	base := mon.baseline(t)
	t.Logf("baseline with one tunnel after a warm-up flood: %v", base)
	drops0 := dropCounters(base.metrics)

	start := time.Now()
	targets := floodTargets("")
	total := udpFlood(sock, targets, floodFor, floodMax)
	took := time.Since(start)
	during := mon.sample(t)
	t.Logf("flood: %d datagrams of 512 bytes in %v (%.0f/s); right after it: %v", total, took.Round(time.Millisecond), float64(total)/took.Seconds(), during)

	time.Sleep(time.Second) // let the last datagrams land
	sink.stop(5 * time.Second)
	var cnt struct {
		Counts map[string]int `json:"counts"`
	}
	lastJSON(t, "udpcount", sink.stdout.String(), &cnt)
	for _, ft := range targets {
		t.Logf("  %-30s %s: sent %d (send errors %d), received by the target %d", ft.name, ft.to, ft.sent, ft.errs, cnt.Counts[ft.tag])
	}
	after := mon.checkBack(t, "after the UDP flood", base, 30*time.Second)
	drops := dropCounters(after.metrics)
	var parts []string
	for reason, v := range drops {
		if d := v - drops0[reason]; d > 0 {
			parts = append(parts, fmt.Sprintf("%s=%.0f", reason, d))
		}
	}
	t.Logf("server drops during the flood: %s; packets rx %.0f tx %.0f in all", strings.Join(parts, " "),
		metricOr0(after.metrics, "masque_tunnel_packets_total", `direction="rx"`), metricOr0(after.metrics, "masque_tunnel_packets_total", `direction="tx"`))

	if cnt.Counts["sink4"] == 0 || cnt.Counts["sink6"] == 0 {
		t.Errorf("the target's sink received %d IPv4 and %d IPv6 flood datagrams, want some of each (else the flood did not go through the tunnel)", cnt.Counts["sink4"], cnt.Counts["sink6"])
	}
	for _, tag := range []string{"closed", "denied-server", "denied-meta", "warm-closed", "warm-denied-server", "warm-denied-meta"} {
		if cnt.Counts[tag] != 0 {
			t.Errorf("the sink received %d datagrams tagged %s, want 0", cnt.Counts[tag], tag)
		}
	}
	if d := drops["destination_denied"] - drops0["destination_denied"]; d == 0 {
		t.Error("masque_tunnel_dropped_packets_total{reason=\"destination_denied\"} did not grow: the denied datagrams never reached the server")
	}
	if p := ping(t, tp.client, targetIP4, 5); p.received < 4 {
		t.Errorf("after the flood: ping through the tunnel %d/%d answered, want ≥ 4\n%s", p.received, p.sent, p.out)
	}
}

// dropCounters returns masque_tunnel_dropped_packets_total by reason.
func dropCounters(metrics string) map[string]float64 {
	out := map[string]float64{}
	for _, l := range strings.Split(metrics, "\n") {
		rest, ok := strings.CutPrefix(l, `masque_tunnel_dropped_packets_total{reason="`)
		if !ok {
			continue
		}
		reason, val, _ := strings.Cut(rest, `"} `)
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err == nil {
			out[reason] = v
		}
	}
	return out
}

// TestMemoryUDPIdleFlows: CONNECT-UDP flows that go idle are closed after
// --udp-idle-timeout and give back their sockets: masqued's fds, goroutines
// and RSS return to the baseline. (TestUDPLimitsAndIdle times the close of
// three flows; this checks what the flows held.)
func TestMemoryUDPIdleFlows(t *testing.T) {
	const (
		flows = 48 // under the default 64 flows per connection
		idle  = 2 * time.Second
	)
	tp := newTopo(t, false)
	srv := tp.startServer(t, "--pprof", "--udp-idle-timeout", idle.String())
	mon := newMonitor(t, srv)
	serveUDP(t, tp.target, targetIP4+":"+udpEchoPort, echo)
	f := startUDPForwarder(t, tp.client, serverAddr, 1, append(tokenAuth("alice"),
		"--listen", "127.0.0.1:0", "--target", targetIP4+":"+udpEchoPort, "--idle-timeout", "1h", "--no-check")...)

	// Warm-up: one flow, echoed, then closed on idle; the baseline is the
	// forwarder's connection without flows.
	warm := dialUDPIn(t, tp.client, f.listens[0])
	if !exchangeOnce(warm, []byte("warm-up"), 5*time.Second) {
		t.Fatal("no echo through the forwarder")
	}
	waitUntil(t, "the warm-up flow to close on idle", 3*idle+5*time.Second, func() bool {
		return metricOr0(srv.metrics(t), "masque_udp_flows") == 0
	})
	base := mon.baseline(t)
	t.Logf("baseline with the forwarder connected, no flow: %v", base)

	// One peer socket per flow. Each peer gets an echo (retrying, since a
	// busy machine may take seconds to set up 48 flows, and the first
	// datagram of a flow can be lost like any UDP datagram), then keeps its
	// flow busy with a datagram every 500 ms until the held sample is taken.
	stop := make(chan struct{})
	stopPeers := sync.OnceFunc(func() { close(stop) })
	t.Cleanup(stopPeers)
	var (
		peers, up sync.WaitGroup
		echoed    atomic.Int32
		retries   atomic.Int32
	)
	for i := range flows {
		c := dialUDPIn(t, tp.client, f.listens[0])
		up.Add(1)
		peers.Go(func() {
			p := []byte(fmt.Sprint("flow ", i))
			ok := exchangeOnce(c, p, 2*time.Second)
			for try := 1; try < 5 && !ok; try++ {
				retries.Add(1)
				ok = exchangeOnce(c, p, 2*time.Second)
			}
			if ok {
				echoed.Add(1)
			}
			up.Done()
			tick := time.NewTicker(500 * time.Millisecond)
			defer tick.Stop()
			for ok {
				select {
				case <-stop:
					return
				case <-tick.C:
					if _, err := c.Write(p); err != nil {
						return
					}
				}
			}
		})
	}
	up.Wait()
	t.Logf("%d of %d flows echoed (%d datagrams sent again)", echoed.Load(), flows, retries.Load())
	if n := int(echoed.Load()); n != flows {
		st := f.status(t)
		t.Errorf("%d of %d flows echoed; forwarder: %d flows, %d refused (last %q), drops %v", n, flows, st.UDP.Flows, st.UDP.FlowsRefused, st.UDP.LastRefusal, st.Drops)
	}
	held := mon.sample(t)
	t.Logf("holding %d flows: %v", flows, held)
	t.Logf("per flow: %.2f fds, %.2f goroutines, RSS %.1f kB", float64(held.fds-base.fds)/flows, float64(held.goroutines-base.goroutines)/flows, float64(held.rss-base.rss)/flows/1024)
	if held.udpFlows != flows {
		t.Errorf("masque_udp_flows = %d while %d flows are open", held.udpFlows, flows)
	}
	if held.fds < base.fds+flows {
		t.Errorf("masqued holds %d fds with %d flows open, baseline %d: want one socket per flow (else this test cannot see them go)", held.fds, flows, base.fds)
	}
	stopPeers()
	peers.Wait()
	last := time.Now()

	// The server checks for idle flows every 3/8 of the timeout.
	limit := idle + idle/2 + 2*time.Second
	after := mon.checkBack(t, fmt.Sprintf("after %d flows went idle", flows), base, limit)
	if e := after.excess(base); e == "" {
		t.Logf("flows closed and resources back %v after the last datagram (idle timeout %v)", time.Since(last).Round(10*time.Millisecond), idle)
	}
	if got := metricOr0(after.metrics, "masque_udp_flows_total"); got != flows+1 {
		t.Errorf("masque_udp_flows_total = %v, want %d (warm-up and %d flows)", got, flows+1, flows)
	}
}
