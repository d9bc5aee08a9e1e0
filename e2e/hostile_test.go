package e2e

// Hostile clients (issue 13): h3attack runs each attack against the real
// masqued with its default limits, and the tests assert the bounds the
// server must keep: memory under a budget while unauthenticated peers try
// to pin it, every such peer gone within the request timeout, legitimate
// clients (token and mTLS) served meanwhile, the address pool not drained
// by one identity, and the log within a budget. hostile_pool_test.go has
// the pool walk and the refusal flood, hostile_conform_test.go the
// identity and protocol conformance cases.

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Budgets the server must keep under attack. They are bounds, not
// performance figures.
const (
	// pinRSSBudget is how far above its baseline masqued's RSS may rise
	// while the pin attack runs from one source, and pinRSSPerSource
	// what each further source may add. masqued holds at most 16
	// unauthenticated connections per source (IPv4 address, IPv6 /64);
	// under this attack each costs about 0.9 MB (quic-go's state for 72
	// streams and its datagram queue), and the churn of refused handshakes
	// and dropped datagrams adds garbage. Measured: +21 MB from one source,
	// +34 MB from two, +28 MB from one /64 (the unfixed server: +413, +848,
	// +856 MB).
	pinRSSBudget    = 36 << 20
	pinRSSPerSource = 28 << 20
	// maxUnauthPerSource is masqued's limit of unauthenticated connections
	// per source: those beyond are closed with H3_EXCESSIVE_LOAD after
	// their handshake.
	maxUnauthPerSource = 16
	// logLineBudget is how many lines masqued may log (at the default
	// level, info) during one attack: a few lifecycle lines and the
	// rate-limited refusals, not a line per address change or refusal.
	logLineBudget = 40
	// poolWalkChangeBudget is how many address changes a pool walk of 17
	// capsules may get: one per capsule at most, under a rate limit per
	// session.
	poolWalkChangeBudget = 8
	// poolLeaseBudget bounds the IPv4 leases in use and reserved after the
	// walk: the walker's own, not the pool.
	poolLeaseBudget = 32
)

// requestTimeout is masqued's default --request-timeout: a hostile
// connection must be closed within it plus a second.
const requestTimeout = 5 * time.Second

// h3attackArgv is h3attack's command line in mode against the test server,
// with alice's token as the valid one and an unknown one as the wrong one.
func h3attackArgv(mode string, extra ...string) []string {
	return append([]string{env.h3attack, mode, "-server", serverAddr,
		"-ca", filepath.Join(env.certDir, "ca.crt"),
		"-token-file", env.tokenFile["alice"], "-wrong-token-file", env.tokenFile["wrong"]}, extra...)
}

// runAttack runs h3attack in ns to completion, bounded by limit, fails t
// unless it exits 0, and returns its stdout.
func runAttack(t *testing.T, ns string, limit time.Duration, mode string, extra ...string) string {
	t.Helper()
	r := runIn(t, ns, limit, h3attackArgv(mode, extra...)...)
	if r.code != 0 {
		t.Fatalf("h3attack %s %v: exit %d\nstdout: %s\nstderr: %s", mode, extra, r.code, tail(r.stdout, 2000), tail(r.stderr, 2000))
	}
	return r.stdout
}

// startHostileServer starts masqued with its default limits, tokens and
// mTLS, and pprof for the monitor.
func (tp *topo) startHostileServer(t *testing.T, extra ...string) *server {
	t.Helper()
	return tp.startServer(t, append([]string{"--pprof", "--client-ca", filepath.Join(env.certDir, "ca.crt")}, extra...)...)
}

// counterDeltas lists the series whose name match accepts that changed
// from before to after, as name{labels} +delta.
func counterDeltas(before, after string, match func(name string) bool) string {
	value := func(text string) map[string]float64 {
		out := map[string]float64{}
		for _, l := range strings.Split(text, "\n") {
			f := strings.Fields(l)
			if len(f) < 2 || strings.HasPrefix(l, "#") {
				continue
			}
			name, _, _ := strings.Cut(f[0], "{")
			if !match(name) {
				continue
			}
			if v, err := strconv.ParseFloat(f[1], 64); err == nil {
				out[f[0]] = v
			}
		}
		return out
	}
	b, a := value(before), value(after)
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(a)) {
		if d := a[k] - b[k]; d != 0 {
			parts = append(parts, fmt.Sprintf("%s %+.0f", k, d))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// refusalCounters matches the counters that say what masqued refused,
// closed or dropped, and why.
func refusalCounters(name string) bool {
	return slices.Contains([]string{
		"masque_tunnel_refused_requests_total", "masque_tunnel_unrouted_requests_total",
		"masque_tunnel_connection_errors_total", "masque_tunnel_idle_connections_closed_total",
		"masque_tunnel_dropped_packets_total", "masque_quic_connections_refused_total",
	}, name)
}

// pinConn and pinSummary are h3attack pin's output lines.
type pinConn struct {
	Event         string  `json:"event"`
	I             int     `json:"i"`
	Local         string  `json:"local"`
	DialError     string  `json:"dial_error"`
	Streams       int     `json:"streams"`
	StreamError   string  `json:"stream_error"`
	Datagrams     int     `json:"datagrams"`
	SendError     string  `json:"send_error"`
	SentMs        float64 `json:"sent_ms"`
	Closed        bool    `json:"closed"`
	ClosedAfterMs float64 `json:"closed_after_ms"`
	ClosedAtMs    int64   `json:"closed_at_unix_ms"`
	Outcome       string  `json:"outcome"`
	Code          string  `json:"code"`
	Remote        bool    `json:"remote"`
	Reason        string  `json:"reason"`
}

type pinSummary struct {
	Event      string         `json:"event"`
	Conns      int            `json:"conns"`
	Dialed     int            `json:"dialed"`
	DialFailed int            `json:"dial_failed"`
	Closed     int            `json:"closed"`
	Open       int            `json:"open"`
	Streams    int            `json:"streams"`
	StreamsMin int            `json:"streams_min"`
	StreamsMax int            `json:"streams_max"`
	Datagrams  int            `json:"datagrams"`
	CloseP50ms float64        `json:"close_p50_ms"`
	CloseMaxms float64        `json:"close_max_ms"`
	Codes      map[string]int `json:"codes"`
	Seconds    float64        `json:"seconds"`
}

// legitClients opens, from client2 (local, its address toward the
// server), a session with alice's token (connectload: it must get its
// ADDRESS_ASSIGN) and a tunnel with dave's client certificate (masque up:
// a ping through it must be answered), both to server, and closes both.
func legitClients(t *testing.T, tp *topo, what, server, local string) {
	t.Helper()
	start := time.Now()
	rep := runLoad(t, tp.client2, 40*time.Second, "-server", server, "-mode", "churn", "-n", "1", "-c", "1",
		"-local", local, "-timeout", "15s", "-duration", "30s")
	if rep.OK != 1 {
		t.Errorf("%s: a client with a token got no session (%d failed: %v)", what, rep.Failed, rep.Errors)
	} else {
		t.Logf("%s: token client's session and address assignment in %.1f ms", what, rep.MaxMs)
	}
	c := tp.startClient(t, tp.client2, certAuth("dave"), "--server", server)
	p := ping(t, tp.client2, targetIP4, 3)
	if p.received == 0 {
		t.Errorf("%s: mTLS client (dave) up, but no ping answered through its tunnel:\n%s", what, p.out)
	} else {
		t.Logf("%s: mTLS client up (%s), ping %d/%d answered", what, c.up.raw, p.received, p.sent)
	}
	if _, killed := c.stop(c.grace); killed || c.exitCode() != 0 {
		t.Errorf("%s: masque up (dave) did not exit cleanly: %s", what, c.exitString())
	}
	t.Logf("%s: legitimate clients done in %v", what, time.Since(start).Round(time.Millisecond))
}

// pinHold is how long h3attack pin keeps its connections at most: longer
// than the request timeout plus a second plus the time to send.
const pinHold = 12 * time.Second

// pinCase is one run of the pin attack.
type pinCase struct {
	what   string
	server string // masqued's address
	local  string // the attacker's addresses (h3attack -local)
	conns  int
	// datagrams per stream; trickle, if not 0, sends one more byte of
	// every HEADERS frame this often (a slow loris).
	datagrams int
	trickle   time.Duration
	// sources is how many sources (IPv4 addresses or IPv6 /64s) the
	// attack comes from: at most maxUnauthPerSource connections of each
	// may be held, and the RSS budget grows by pinRSSPerSource for each
	// beyond the first.
	sources int
	// legitLocal is client2's address toward the server, for the
	// legitimate clients.
	legitLocal string
}

// pinAttack runs h3attack pin while the legitimate clients connect, and
// checks masqued's memory, the hostile connections' closes and the
// legitimate clients.
func pinAttack(t *testing.T, tp *topo, srv *server, mon *monitor, base usage, pc pinCase) {
	t.Helper()
	what, conns := pc.what, pc.conns
	m0 := srv.metrics(t)
	p := startProc(t, tp.client, "h3attack pin", h3attackArgv("pin", "-server", pc.server, "-local", pc.local, "-n", strconv.Itoa(conns),
		"-streams", "100", "-datagrams", strconv.Itoa(pc.datagrams), "-size", "1150", "-trickle", pc.trickle.String(),
		"-duration", pinHold.String())...)
	p.grace = 10 * time.Second

	// Peak RSS, sampled without forcing a GC, until the attack ends.
	var peak atomic.Int64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if rss, err := vmRSS(srv.cmd.Process.Pid); err == nil && rss > peak.Load() {
				peak.Store(rss)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	stopSampler := sync.OnceFunc(func() {
		close(stop)
		sampler.Wait()
	})
	defer stopSampler()

	event := func(name string) pinSummary {
		t.Helper()
		line, err := p.waitLine(p.stdout, pinHold+20*time.Second, func(l string) bool { return strings.Contains(l, `"event":"`+name+`"`) })
		if err != nil {
			t.Fatalf("%s: h3attack pin: %v\nstderr: %s", what, err, tail(p.stderr.String(), 2000))
		}
		var s pinSummary
		lastJSON(t, "h3attack pin "+name, line, &s)
		return s
	}
	opened := event("opened")
	t.Logf("%s: %d of %d connections up after %.1f s with %d streams (%d-%d per connection)",
		what, opened.Dialed, conns, opened.Seconds, opened.Streams, opened.StreamsMin, opened.StreamsMax)
	// The legitimate clients connect while the datagrams flood in.
	legitStart := time.Now()
	legitClients(t, tp, what, pc.server, pc.legitLocal)
	legitEnd := time.Now()
	ready := event("ready")
	t.Logf("%s: everything sent after %.1f s: %d datagrams", what, ready.Seconds, ready.Datagrams)
	heldRSS := peak.Load()
	heldMemory(t, mon, what)

	if !p.wait(pinHold + 10*time.Second) {
		t.Fatalf("%s: h3attack pin still runs %v after its -duration", what, 10*time.Second)
	}
	stopSampler()
	if p.exitCode() != 0 {
		t.Fatalf("%s: h3attack pin: %s\nstderr: %s", what, p.exitString(), tail(p.stderr.String(), 2000))
	}
	var done pinSummary
	lastJSON(t, "h3attack pin done", p.stdout.String(), &done)
	var (
		late                  []string
		firstClose, lastClose time.Time
		held                  int // kept until the request timeout, or never closed
	)
	for _, l := range nonEmptyLines(p.stdout.String()) {
		var pc pinConn
		if json.Unmarshal([]byte(l), &pc) != nil || pc.Event != "conn" || pc.DialError != "" {
			continue
		}
		if pc.Closed {
			at := time.UnixMilli(pc.ClosedAtMs)
			if firstClose.IsZero() || at.Before(firstClose) {
				firstClose = at
			}
			if at.After(lastClose) {
				lastClose = at
			}
		}
		// Held: kept open until the request timeout closed it (H3_NO_ERROR),
		// or never closed. Those over the limit are closed with
		// H3_EXCESSIVE_LOAD; the odd one that fails otherwise (a handshake
		// lost in the flood) was never held either.
		if !pc.Closed || pc.Code == "0x100" {
			held++
		}
		if !pc.Closed || pc.ClosedAfterMs > float64((requestTimeout+time.Second)/time.Millisecond) {
			late = append(late, fmt.Sprintf("#%d from %s (%d streams): %s", pc.I, pc.Local, pc.Streams, closeString(pc)))
		}
	}
	rise := peak.Load() - base.rss
	budget := int64(pinRSSBudget + (pc.sources-1)*pinRSSPerSource)
	t.Logf("%s: masqued RSS peak %.1f MB (%+.1f MB over the baseline %.1f MB; %.1f MB when all was sent); budget +%d MB",
		what, float64(peak.Load())/(1<<20), float64(rise)/(1<<20), float64(base.rss)/(1<<20), float64(heldRSS)/(1<<20), budget>>20)
	t.Logf("%s: %d connections held, the rest closed at once over the unauthenticated limit", what, held)
	t.Logf("%s: %d connections (%d dial failures), %d closed by the server within %v (close after handshake p50 %.0f ms, max %.0f ms; codes %v), %d still open at the end",
		what, done.Dialed, done.DialFailed, done.Closed, pinHold, done.CloseP50ms, done.CloseMaxms, done.Codes, done.Open)
	t.Logf("%s: streams quic-go let each connection open: %d-%d (%d in all)", what, done.StreamsMin, done.StreamsMax, done.Streams)
	t.Logf("%s: masqued's counters: %s", what, counterDeltas(m0, srv.metrics(t), refusalCounters))

	switch {
	case lastClose.IsZero():
		t.Logf("%s: the legitimate clients ran while every hostile connection was open", what)
	case legitEnd.Before(firstClose):
		t.Logf("%s: the legitimate clients were done before the first hostile connection was closed", what)
	case legitStart.Before(lastClose):
		t.Logf("%s: the legitimate clients ran from %v before to %v after the first hostile close", what,
			firstClose.Sub(legitStart).Round(time.Millisecond), legitEnd.Sub(firstClose).Round(time.Millisecond))
	default:
		t.Errorf("%s: the legitimate clients started %v after the last hostile connection was closed: they did not connect during the attack",
			what, legitStart.Sub(lastClose).Round(time.Millisecond))
	}
	if rise > budget {
		t.Errorf("%s: masqued's RSS rose %.1f MB over its baseline, budget %d MB", what, float64(rise)/(1<<20), budget>>20)
	}
	if done.Dialed == 0 {
		t.Errorf("%s: no hostile connection was established (%d dial failures): the attack did not run", what, done.DialFailed)
	}
	if held > pc.sources*maxUnauthPerSource {
		t.Errorf("%s: masqued held %d of the attacker's %d connections from %d sources, want at most %d", what, held, conns, pc.sources, pc.sources*maxUnauthPerSource)
	}
	if len(late) > 0 {
		t.Errorf("%s: %d of %d hostile connections not closed within the request timeout %v + 1 s, e.g.:\n  %s",
			what, len(late), done.Dialed, requestTimeout, strings.Join(late[:min(len(late), 5)], "\n  "))
	}
}

// heldMemory logs masqued's heap while the attack holds it: as it is
// (live and garbage), and right after a forced GC (live only), and with
// MASQUE_E2E_HEAP_DIR set (a dev knob) saves the heap profile of that GC
// there for go tool pprof.
func heldMemory(t *testing.T, mon *monitor, what string) {
	t.Helper()
	heap := func() (inUse, sys float64) {
		text, err := mon.get("/metrics")
		if err != nil {
			return 0, 0
		}
		inUse, _ = metricValue(text, "go_memstats_heap_inuse_bytes")
		sys, _ = metricValue(text, "go_memstats_sys_bytes")
		return inUse, sys
	}
	all, sys := heap()
	prof, err := mon.get("/debug/pprof/heap?gc=1")
	live, _ := heap()
	t.Logf("%s: while the attack holds: heap in use %.1f MB, %.1f MB live after a GC; Go runtime total %.1f MB",
		what, all/(1<<20), live/(1<<20), sys/(1<<20))
	dir := os.Getenv("MASQUE_E2E_HEAP_DIR")
	if dir == "" {
		return
	}
	if err == nil {
		name := filepath.Join(dir, "pin-"+strings.ReplaceAll(what, " ", "-")+".pb.gz")
		err = os.WriteFile(name, []byte(prof), 0o644)
		t.Logf("%s: heap profile in %s", what, name)
	}
	if err != nil {
		t.Logf("%s: heap profile: %v", what, err)
	}
}

func closeString(pc pinConn) string {
	if !pc.Closed {
		return "still open"
	}
	return fmt.Sprintf("closed after %.0f ms (%s %s remote=%v %q)", pc.ClosedAfterMs, pc.Outcome, pc.Code, pc.Remote, pc.Reason)
}

// TestHostilePin: unauthenticated connections that open request streams
// with a HEADERS frame announced but never finished, and send datagrams for
// each, from one source and then from two, and then connections that
// trickle their HEADERS a byte at a time, hold masqued's memory under a
// budget, are all closed within the request timeout plus a second, and do
// not keep a client with a token or a client certificate out. Afterwards
// masqued is back at its baseline.
func TestHostilePin(t *testing.T) {
	tp := newTopo(t, true)
	local := loadClientAddrs(t, tp, 2)
	srv := tp.startHostileServer(t)
	mon := newMonitor(t, srv)

	// Warm-up: what the legitimate clients set up on first use exists at
	// the baseline.
	legitClients(t, tp, "warm-up", serverAddr, client2IP4)
	base := mon.baseline(t)
	t.Logf("baseline: %v", base)

	first, _, _ := strings.Cut(local, "-")
	for _, pc := range []pinCase{
		{what: "one source", server: serverAddr, local: first, conns: 64, datagrams: 32, sources: 1, legitLocal: client2IP4},
		{what: "two sources", server: serverAddr, local: local, conns: 128, datagrams: 32, sources: 2, legitLocal: client2IP4},
		// Progress on a HEADERS frame must not extend its deadline.
		{what: "one source trickling its HEADERS", server: serverAddr, local: first, conns: 64, trickle: 500 * time.Millisecond, sources: 1, legitLocal: client2IP4},
	} {
		pinAttack(t, tp, srv, mon, base, pc)
		mon.checkBack(t, "after the pin attack from "+pc.what, base, 20*time.Second)
	}
}

// Addresses of the IPv6 pin attack: masqued listens on its IPv6 address,
// with a certificate for it.
const (
	serverIP6   = "2001:db8:1::2"
	server6Addr = "[" + serverIP6 + "]:4433"
	client2IP6  = "2001:db8:3::1"
)

// maxConnsPerSource is masqued's default --max-conns-per-source.
const maxConnsPerSource = 64

// TestHostilePinIPv6Prefix: an IPv6 /64 is one source to masqued. The pin
// attack with 128 connections from four addresses of one /64 gets at most
// maxUnauthPerSource of them held, and is bounded like the attack from
// one IPv4 source: memory, closes, legitimate clients served.
func TestHostilePinIPv6Prefix(t *testing.T) {
	tp := newTopo(t, true)
	local := addClientAddrs(t, tp, netip.MustParseAddr("2001:db8:1::10"), 4)
	pki := serverCertFor(t, serverIP6)
	srv := tp.startHostileServer(t, "--listen", server6Addr,
		"--cert", filepath.Join(pki, "server.crt"), "--key", filepath.Join(pki, "server.key"))
	mon := newMonitor(t, srv)

	legitClients(t, tp, "warm-up", server6Addr, client2IP6)
	base := mon.baseline(t)
	t.Logf("baseline: %v", base)
	pc := pinCase{what: "one /64", server: server6Addr, local: local, conns: 2 * maxConnsPerSource, datagrams: 32,
		sources: 1, legitLocal: client2IP6}
	pinAttack(t, tp, srv, mon, base, pc)
	mon.checkBack(t, "after the pin attack from one /64", base, 20*time.Second)
}

// serverCertFor issues, with the test CA, a server certificate for host in
// a directory of the test's own, and returns the directory.
func serverCertFor(t *testing.T, host string) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"ca.crt", "ca.key"} {
		b, err := os.ReadFile(filepath.Join(env.certDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mustRun(t, env.masqued, "cert", "--dir", dir, "--host", host)
	return dir
}
