package tunnel

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// testClock is a manual clock for rateLog.now; the tests that use it run
// on one goroutine.
type testClock struct{ t time.Time }

func (c *testClock) now() time.Time          { return c.t }
func (c *testClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newTestRateLog() (*rateLog, *testClock) {
	c := &testClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	return &rateLog{now: c.now}, c
}

func TestSourceOf(t *testing.T) {
	tests := []struct{ in, want string }{
		{"198.51.100.7:443", "198.51.100.7/32"},
		{"[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2::ffff]:1", "2001:db8:1:2::/64"},
		{"[::ffff:198.51.100.7]:1", "198.51.100.7/32"},
		{"[fe80::1%eth0]:1", "fe80::/64"},
		{"garbage", "invalid Prefix"},
		{"", "invalid Prefix"},
	}
	for _, tt := range tests {
		if got := sourceOf(tt.in).String(); got != tt.want {
			t.Errorf("sourceOf(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestRateLogPerSource(t *testing.T) {
	rl, clock := newTestRateLog()
	type step struct {
		after  time.Duration
		from   string
		ok     bool
		report uint64 // suppressed=N on a line written
	}
	steps := []step{
		{0, "198.51.100.7:1", true, 0},
		{time.Second, "198.51.100.7:2", false, 0},
		{0, "[2001:db8:1:2::1]:1", true, 1},
		{0, "[2001:db8:1:2::2]:1", false, 0}, // the same /64
		{0, "[2001:db8:1:3::1]:1", true, 1},  // another /64
		{refusalLogInterval - time.Second - time.Nanosecond, "198.51.100.7:1", false, 0},
		{time.Nanosecond, "198.51.100.7:1", true, 1},
		{0, "198.51.100.7:1", false, 0},
	}
	for i, s := range steps {
		clock.advance(s.after)
		ok, n := rl.allow(s.from)
		if ok != s.ok || n != s.report {
			t.Errorf("step %d: allow(%s) = %v, %d, want %v, %d", i, s.from, ok, n, s.ok, s.report)
		}
	}
	if got := rl.suppressedTotal.Load(); got != 4 {
		t.Errorf("suppressedTotal = %d, want 4", got)
	}
}

// TestRateLogFlood proves the budget under floods of 10,000 refusals, from
// one source and from 1,000, at once and spread over time: the lines
// written stay within refusalLogBurst + refusalLogRate × elapsed in all and
// 1 + elapsed / refusalLogInterval per source, and every line is either
// written or counted as suppressed (and reported on a later line).
func TestRateLogFlood(t *testing.T) {
	tests := []struct {
		name    string
		sources int
		every   time.Duration // between refusals
	}{
		{"one source at once", 1, 0},
		{"one source over 10s", 1, time.Millisecond},
		{"one source over 100s", 1, 10 * time.Millisecond},
		{"1000 sources at once", 1000, 0},
		{"1000 sources over 1s", 1000, 100 * time.Microsecond},
		{"1000 sources over 100s", 1000, 10 * time.Millisecond},
	}
	const flood = 10000
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rl, clock := newTestRateLog()
			start := clock.now()
			perSource := map[string]int{}
			written, reported := 0, uint64(0)
			for i := range flood {
				from := fmt.Sprintf("[2001:db8:%x::1]:443", i%tt.sources)
				if tt.sources == 1 {
					from = fmt.Sprintf("198.51.100.7:%d", 1024+i%60000)
				}
				ok, n := rl.allow(from)
				if ok {
					written++
					perSource[from[:strings.LastIndexByte(from, ':')]]++
					reported += n
				}
				clock.advance(tt.every)
			}
			elapsed := clock.now().Sub(start)
			maxAll := refusalLogBurst + int(float64(refusalLogRate)*elapsed.Seconds())
			maxOne := 1 + int(elapsed/refusalLogInterval)
			if written > maxAll {
				t.Errorf("%d lines written in %v, want at most %d", written, elapsed, maxAll)
			}
			if written == 0 {
				t.Errorf("no line written")
			}
			for s, n := range perSource {
				if n > maxOne {
					t.Errorf("source %s: %d lines in %v, want at most %d", s, n, elapsed, maxOne)
				}
			}
			if got := rl.suppressedTotal.Load(); got+uint64(written) != flood {
				t.Errorf("suppressedTotal = %d with %d written, want %d in all", got, written, flood)
			}
			// What a later line would report, plus what the lines did.
			if got := reported + rl.suppressed; got != rl.suppressedTotal.Load() {
				t.Errorf("reported suppressed=%d (+%d pending), want %d", reported, rl.suppressed, rl.suppressedTotal.Load())
			}
			if len(rl.last) > refusalLogSources {
				t.Errorf("%d sources remembered, want at most %d", len(rl.last), refusalLogSources)
			}
			t.Logf("%d refusals from %d sources over %v: %d lines", flood, tt.sources, elapsed, written)
		})
	}
}

// TestRateLogBounded checks the source table never outgrows its bound,
// however many sources come, and that a source forgotten is within its
// budget anyway.
func TestRateLogBounded(t *testing.T) {
	rl, clock := newTestRateLog()
	for i := range 100000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		rl.allow(netip.AddrPortFrom(a, 1).String())
		if len(rl.last) > refusalLogSources {
			t.Fatalf("after %d sources: %d remembered, want at most %d", i+1, len(rl.last), refusalLogSources)
		}
		clock.advance(50 * time.Millisecond)
	}
}

func TestRateLogLines(t *testing.T) {
	rl, clock := newTestRateLog()
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	ctx := context.Background()
	for range 3 {
		rl.log(ctx, l, slog.LevelInfo, "198.51.100.7:1", "request refused", "reason", "unauthenticated")
	}
	clock.advance(refusalLogInterval)
	rl.log(ctx, l, slog.LevelWarn, "198.51.100.7:1", "request refused", "reason", "pool")
	// Disabled levels neither write nor count.
	rl.log(ctx, l, slog.LevelDebug, "198.51.100.7:1", "request refused")
	want := "level=INFO msg=\"request refused\" reason=unauthenticated\n" +
		"level=WARN msg=\"request refused\" reason=pool suppressed=2\n"
	if buf.String() != want {
		t.Errorf("log:\n%s\nwant:\n%s", buf.String(), want)
	}
	if got := rl.suppressedTotal.Load(); got != 2 {
		t.Errorf("suppressedTotal = %d, want 2", got)
	}
}

// TestRefusalLogOverQUIC floods a real server with refused requests from
// one source, CONNECT-IP and CONNECT-UDP with a wrong token: each writes
// one line per refusalLogInterval, and the rest are counted as suppressed.
func TestRefusalLogOverQUIC(t *testing.T) {
	logs := newRecordCounter(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	ts := startServer(t, func(c *ServerConfig) { c.Logger = slog.New(logs) })
	h := dialH3(t, ts)
	const flood = 200
	start := time.Now()
	for i := range flood {
		fields := connectIPFields(ts.addr, "wrong-token")
		if i%2 == 1 {
			fields = udpFlowFields(ts.addr, netip.MustParseAddrPort("198.18.2.2:53"))
			fields[len(fields)-1].Value = "Bearer wrong-token"
		}
		if got := h.request(fields).status(); got != "401" {
			t.Fatalf("request %d: status %s, want 401", i, got)
		}
	}
	maxLines := 1 + int(time.Since(start)/refusalLogInterval)
	lines := 0
	for _, msg := range []string{"request refused", "udp request refused"} {
		_, n := logs.counts(msg)
		if n < 1 || n > maxLines {
			t.Errorf("%d %q lines for %d refusals, want 1 to %d", n, msg, flood/2, maxLines)
		}
		lines += n
	}
	c := &ts.srv.counters
	if got := c.refusalLog.suppressedTotal.Load() + c.udp.refusalLog.suppressedTotal.Load(); got != uint64(flood-lines) {
		t.Errorf("suppressed = %d, want %d", got, flood-lines)
	}
}
