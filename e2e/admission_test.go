package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Flood sources: addresses on the target's link ("the internet"), whose
// answers from the server are dropped in the target namespace, so that
// they behave like spoofed sources that never complete a handshake.
const (
	floodFirst = 100 // 198.18.2.100 ...
	floodCount = 100 // ... 198.18.2.199
)

// loadReport is connectload's JSON line.
type loadReport struct {
	Event    string         `json:"event"`
	OK       int64          `json:"ok"`
	Failed   int64          `json:"failed"`
	Open     int64          `json:"open"`
	Attempts int64          `json:"attempts"`
	Skipped  int64          `json:"skipped"`
	Seconds  float64        `json:"seconds"`
	Rate     float64        `json:"rate"`
	P50ms    float64        `json:"p50_ms"`
	P99ms    float64        `json:"p99_ms"`
	MaxMs    float64        `json:"max_ms"`
	Errors   map[string]int `json:"errors"`
}

// connectloadArgs are connectload's flags to reach the test server as
// alice.
func connectloadArgs(extra ...string) []string {
	return append([]string{env.connectload, "-server", serverAddr,
		"-ca", filepath.Join(env.certDir, "ca.crt"), "-token-file", env.tokenFile["alice"]}, extra...)
}

func runLoad(t *testing.T, ns string, limit time.Duration, args ...string) loadReport {
	t.Helper()
	r := runIn(t, ns, limit, connectloadArgs(args...)...)
	if r.code != 0 {
		t.Fatalf("connectload %v: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, tail(r.stderr, 2000))
	}
	var rep loadReport
	lastJSON(t, "connectload", r.stdout, &rep)
	return rep
}

// floodSources puts the flood addresses on the target's t0 with a route to
// the server, and drops the server's answers to them.
func floodSources(t *testing.T, tp *topo) string {
	t.Helper()
	for i := range floodCount {
		mustRun(t, "ip", "-n", tp.target, "addr", "add", fmt.Sprintf("198.18.2.%d/32", floodFirst+i), "dev", "t0")
	}
	mustRun(t, "ip", "-n", tp.target, "route", "add", "198.18.1.0/24", "via", egressIP4)
	nftInputDrop(t, tp.target, "spoofed", fmt.Sprintf("ip daddr 198.18.2.%d-198.18.2.%d udp sport 4433 drop", floodFirst, floodFirst+floodCount-1))
	return fmt.Sprintf("198.18.2.%d-198.18.2.%d", floodFirst, floodFirst+floodCount-1)
}

// cpuTicks returns the user+system clock ticks pid has used.
func cpuTicks(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st
}

// floodResult is what one flood against a server measured.
type floodResult struct {
	flood      loadReport
	legit      loadReport
	peakFlight float64 // highest masque_quic_handshakes_in_flight sampled
	retries    float64
	cpu        time.Duration // masqued's CPU time during the flood
	wall       time.Duration
}

// flood runs a handshake flood from the spoofed sources at rate a second
// for d, while alice opens legit sessions from the client namespace, and
// samples the server's handshakes in flight.
func flood(t *testing.T, tp *topo, srv *server, sources string, rate int, d time.Duration, legit int) floodResult {
	t.Helper()
	var res floodResult
	pid := srv.cmd.Process.Pid
	r0 := metricOr0(srv.metrics(t), "masque_quic_retries_total")
	c0, w0 := cpuTicks(t, pid), time.Now()

	var wg sync.WaitGroup
	wg.Go(func() {
		res.flood = runLoad(t, tp.target, d+30*time.Second, "-mode", "flood", "-local", sources,
			"-rate", strconv.Itoa(rate), "-c", "4000", "-timeout", "3s", "-duration", d.String())
	})
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			if v := metricOr0(srv.metrics(t), "masque_quic_handshakes_in_flight"); v > res.peakFlight {
				res.peakFlight = v
			}
		}
	})
	// Legit sessions once the flood has built up.
	time.Sleep(d / 3)
	res.legit = runLoad(t, tp.client, d+30*time.Second, "-mode", "churn", "-n", strconv.Itoa(legit), "-c", "2",
		"-timeout", "10s", "-duration", "30s", "-local", clientIP4)
	wg.Wait()
	res.cpu = time.Duration(cpuTicks(t, pid)-c0) * 10 * time.Millisecond // USER_HZ is 100
	res.wall = time.Since(w0)
	close(stop)
	sampler.Wait()
	res.retries = metricOr0(srv.metrics(t), "masque_quic_retries_total") - r0
	t.Logf("flood %d/s for %v: %d started, %d skipped, %d completed, %d failed; server: peak handshakes in flight %.0f, %.0f Retries, CPU %v in %v (%.0f%% of a core)",
		rate, d, res.flood.Attempts, res.flood.Skipped, res.flood.OK, res.flood.Failed, res.peakFlight, res.retries,
		res.cpu, res.wall.Round(time.Millisecond), 100*res.cpu.Seconds()/res.wall.Seconds())
	t.Logf("legit sessions during the flood: %d of %d, %d failed %v; set-up p50 %.1f ms, p99 %.1f ms, max %.1f ms",
		res.legit.OK, legit, res.legit.Failed, res.legit.Errors, res.legit.P50ms, res.legit.P99ms, res.legit.MaxMs)
	return res
}

// TestHandshakeFlood: a flood of handshakes from 100 addresses that never
// answer (spoofed sources) first runs against a server with its defences
// off, to show what it costs, then against the default configuration.
// With the defaults the server asks for Retry once 128 handshakes are in
// flight, so the flood holds no more server state than that and costs
// little CPU, and a legitimate client still opens every one of its
// sessions.
func TestHandshakeFlood(t *testing.T) {
	const (
		rate  = 300
		d     = 6 * time.Second
		legit = 20
	)
	tp := newTopo(t, false)
	sources := floodSources(t, tp)

	// Control: no Retry and no rate limit. Every flood packet costs a
	// handshake whose state lives until the server's 10 s timeout.
	off := tp.startServer(t, "--retry-threshold", "1000000", "--max-handshake-rate", "-1")
	base := runLoad(t, tp.client, 30*time.Second, "-mode", "churn", "-n", "10", "-c", "1", "-local", clientIP4)
	t.Logf("legit sessions without a flood: %d of 10; set-up p50 %.1f ms, p99 %.1f ms", base.OK, base.P50ms, base.P99ms)
	if base.OK != 10 {
		t.Fatalf("without a flood %d of 10 sessions opened: %v", base.OK, base.Errors)
	}
	ctl := flood(t, tp, off, sources, rate, d, legit)
	if ctl.retries != 0 {
		t.Errorf("control: %v Retries with Retry off", ctl.retries)
	}
	// The control shows the flood is real: state piles up far past the
	// threshold the defended server keeps to.
	if ctl.peakFlight < 500 {
		t.Errorf("control: peak handshakes in flight %.0f, want ≥ 500 (the flood did not reach the server?)", ctl.peakFlight)
	}
	if ctl.flood.OK != 0 {
		t.Errorf("control: %d flood handshakes completed, want 0 (answers to the flood sources are dropped)", ctl.flood.OK)
	}
	off.stop(15 * time.Second)

	// Defaults: --retry-threshold 128, --max-handshake-rate 1000.
	srv := tp.startServer(t)
	res := flood(t, tp, srv, sources, rate, d, legit)
	if res.flood.Attempts < int64(rate)*int64(d/time.Second)*8/10 {
		t.Errorf("the flood started only %d handshakes, want about %d", res.flood.Attempts, rate*int(d/time.Second))
	}
	if res.peakFlight > 128+64 {
		t.Errorf("peak handshakes in flight %.0f, want ≤ %d (Retry threshold 128, sampled every 200 ms)", res.peakFlight, 128+64)
	}
	if res.retries < float64(res.flood.Attempts)/2 {
		t.Errorf("%.0f Retries for %d flood handshakes, want at least half of them answered with Retry", res.retries, res.flood.Attempts)
	}
	if res.legit.OK != legit || res.legit.Failed != 0 {
		t.Errorf("legit sessions during the flood: %d of %d opened, %d failed %v; want all", res.legit.OK, legit, res.legit.Failed, res.legit.Errors)
	}
	if res.flood.OK != 0 {
		t.Errorf("%d flood handshakes completed, want 0", res.flood.OK)
	}
	m := srv.metrics(t)
	t.Logf("defaults vs control: peak state %.0f vs %.0f handshakes, CPU %.0f%% vs %.0f%% of a core",
		res.peakFlight, ctl.peakFlight, 100*res.cpu.Seconds()/res.wall.Seconds(), 100*ctl.cpu.Seconds()/ctl.wall.Seconds())
	if got := metricOr0(m, "masque_tunnel_sessions_total"); got != legit {
		t.Errorf("masque_tunnel_sessions_total = %v, want %d (the legit sessions only)", got, legit)
	}
}
