package e2e

// Hostile clients (issue 13), continued: one identity walking the address
// pool, and a flood of refused requests, each within masqued's log budget.

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// logLines is how many lines masqued has written to stderr so far.
func (s *server) logLines() int {
	return strings.Count(s.stderr.String(), "\n")
}

// newLogLines returns masqued's stderr lines after the first n.
func (s *server) newLogLines(n int) []string {
	lines := strings.Split(s.stderr.String(), "\n")
	if n > len(lines) {
		return nil
	}
	return nonEmptyLines(strings.Join(lines[n:], "\n"))
}

// logSummary counts lines by their msg= attribute, for the failure message.
func logSummary(lines []string) string {
	n := map[string]int{}
	for _, l := range lines {
		msg := "?"
		if _, rest, ok := strings.Cut(l, "msg="); ok {
			msg = rest
			if strings.HasPrefix(msg, `"`) {
				if i := strings.Index(msg[1:], `"`); i >= 0 {
					msg = msg[:i+2]
				}
			} else if i := strings.IndexByte(msg, ' '); i >= 0 {
				msg = msg[:i]
			}
		}
		n[msg]++
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(n)) {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, n[k]))
	}
	return strings.Join(parts, ", ")
}

// addressMetrics matches the metrics of the pools and of address requests.
func addressMetrics(name string) bool {
	return strings.HasPrefix(name, "masque_") && (strings.Contains(name, "address") || strings.Contains(name, "pool") || strings.Contains(name, "lease"))
}

// walkReport is h3attack poolwalk's output.
type walkReport struct {
	Initial  string  `json:"initial"`
	Requests int     `json:"requests"`
	Answers  int     `json:"answers"`
	Distinct int     `json:"distinct"`
	Changes  int     `json:"changes"`
	Last     string  `json:"last"`
	Seconds  float64 `json:"seconds"`
	Error    string  `json:"error"`
	Outcome  string  `json:"outcome"`
	Code     string  `json:"code"`
}

// TestHostilePoolWalk: one authenticated session sends ADDRESS_REQUEST
// capsules of 4,000 addresses each, walking the whole IPv4 pool. It gets a
// handful of address changes, not the pool; the pool's leases stay few; a
// fresh identity still gets addresses; and masqued logs within its budget.
func TestHostilePoolWalk(t *testing.T) {
	tp := newTopo(t, false)
	srv := tp.startHostileServer(t, "--log-level", "info")

	n0, m0 := srv.logLines(), srv.metrics(t)
	out := runAttack(t, tp.client, 60*time.Second, "poolwalk", "-capsules", "17", "-entries", "4000", "-duration", "45s")
	time.Sleep(500 * time.Millisecond) // the session's end reaches the log
	logged := srv.newLogLines(n0)
	var rep walkReport
	lastJSON(t, "h3attack poolwalk", out, &rep)
	m := srv.metrics(t)
	inUse := metricOr0(m, "masque_pool_addresses_in_use", `family="ipv4"`)
	reserved := metricOr0(m, "masque_pool_addresses_reserved", `family="ipv4"`)
	t.Logf("pool walk: %d ADDRESS_REQUEST capsules, %d answered in %.3f s, %d distinct addresses assigned (%d changes; first %s, last %s)%s",
		rep.Requests, rep.Answers, rep.Seconds, rep.Distinct, rep.Changes, rep.Initial, rep.Last, walkEnd(rep))
	t.Logf("after the walk: IPv4 leases in use %.0f, reserved %.0f; masqued logged %d lines: %s", inUse, reserved, len(logged), logSummary(logged))
	t.Logf("masqued's counters: %s", counterDeltas(m0, m, func(n string) bool { return refusalCounters(n) || addressMetrics(n) }))

	if rep.Distinct == 0 {
		t.Errorf("the walker's session got no address at all: %+v", rep)
	}
	if rep.Changes > poolWalkChangeBudget {
		t.Errorf("the walker got %d address changes from %d capsules, budget %d", rep.Changes, rep.Requests, poolWalkChangeBudget)
	}
	if inUse > poolLeaseBudget || reserved > poolLeaseBudget {
		t.Errorf("after the walk %.0f IPv4 addresses in use and %.0f reserved, want ≤ %d each", inUse, reserved, poolLeaseBudget)
	}
	if len(logged) > logLineBudget {
		t.Errorf("masqued logged %d lines during the pool walk, budget %d: %s", len(logged), logLineBudget, logSummary(logged))
	}

	// A fresh identity: bob.
	bob := runLoad(t, tp.client, 30*time.Second, "-mode", "churn", "-n", "1", "-c", "1",
		"-token-file", env.tokenFile["bob"], "-timeout", "10s", "-duration", "20s")
	if bob.OK != 1 {
		t.Errorf("after the pool walk a fresh identity (bob) got no session: %v", bob.Errors)
	} else {
		t.Logf("after the pool walk bob got a session and addresses")
	}
}

func walkEnd(rep walkReport) string {
	if rep.Error == "" {
		return ""
	}
	return fmt.Sprintf("; the answers stopped: %s (%s %s)", rep.Error, rep.Outcome, rep.Code)
}

// refuseReport is h3attack refuse's output.
type refuseReport struct {
	Requests    int64          `json:"requests"`
	Answered    int64          `json:"answered"`
	Statuses    map[string]int `json:"statuses"`
	Errors      map[string]int `json:"errors"`
	Connections int64          `json:"connections"`
	Closes      map[string]int `json:"closes"`
	Seconds     float64        `json:"seconds"`
}

// TestHostileRefusalFlood: 5,000 CONNECT-IP requests with a wrong token, as
// fast as masqued answers them, cost masqued no more log lines than its
// budget.
func TestHostileRefusalFlood(t *testing.T) {
	const n = 5000
	tp := newTopo(t, false)
	srv := tp.startHostileServer(t, "--log-level", "info")

	n0, m0 := srv.logLines(), srv.metrics(t)
	out := runAttack(t, tp.client, 90*time.Second, "refuse", "-n", strconv.Itoa(n), "-c", "8", "-p", "4", "-duration", "60s")
	time.Sleep(500 * time.Millisecond)
	logged := srv.newLogLines(n0)
	var rep refuseReport
	lastJSON(t, "h3attack refuse", out, &rep)
	t.Logf("refusal flood: %d requests in %.1f s on %d connections, %d answered %v, errors %v, connections closed by the server %v",
		rep.Requests, rep.Seconds, rep.Connections, rep.Answered, rep.Statuses, rep.Errors, rep.Closes)
	t.Logf("masqued logged %d lines during the flood: %s", len(logged), logSummary(logged))
	m := srv.metrics(t)
	t.Logf("masqued's counters: %s", counterDeltas(m0, m, refusalCounters))
	// Not logged, but counted: every 401 is a refusal with its reason.
	if got, want := metricDelta(m0, m, "masque_tunnel_refused_requests_total", `reason="unauthenticated"`), float64(rep.Statuses["401"]); got < want {
		t.Errorf("masque_tunnel_refused_requests_total{reason=\"unauthenticated\"} grew by %.0f for %.0f requests answered 401", got, want)
	}
	if rep.Requests < n {
		t.Errorf("the flood sent %d requests, want %d", rep.Requests, n)
	}
	if rep.Statuses["200"] != 0 {
		t.Errorf("%d requests with a wrong token got 200", rep.Statuses["200"])
	}
	if len(logged) > logLineBudget {
		t.Errorf("masqued logged %d lines during a flood of %d refused requests, budget %d: %s", len(logged), rep.Requests, logLineBudget, logSummary(logged))
	}
}
