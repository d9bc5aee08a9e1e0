package tunnel

import (
	"context"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// The budget of a rateLog. A flood of refused requests, from one source
// or from many, costs the log at most refusalLogRate lines a second after
// a burst of refusalLogBurst, and one source at most a line every
// refusalLogInterval. The server keeps one rateLog for CONNECT-IP and one
// for CONNECT-UDP, so its refusals log at most 10 lines/s in all.
const (
	refusalLogInterval            = 10 * time.Second // per source
	refusalLogRate     rate.Limit = 5                // lines per second, all sources
	refusalLogBurst               = 10
	// refusalLogSources bounds the sources remembered (~100 KiB). Only a
	// line that gets out adds one, so at most refusalLogRate ×
	// refusalLogInterval + refusalLogBurst (60) are recent at any time;
	// when the table is full, the older ones are dropped, and if that
	// frees nothing it is cleared (the global budget still holds).
	refusalLogSources = 1024
)

// rateLog logs refused requests within a budget: per source (an IPv4
// address, or an IPv6 /64, which one party can own whole) and in all.
// Lines over the budget are not written but counted, in total (a metric)
// and since the last line that got out, which reports them as
// suppressed=N. The zero value is ready; rateLog is safe for concurrent
// use.
type rateLog struct {
	// now is the clock; nil means time.Now. Tests set it before use.
	now func() time.Time
	// suppressedTotal counts the lines not written since start.
	suppressedTotal atomic.Uint64

	mu         sync.Mutex // guards the fields below
	last       map[netip.Prefix]time.Time
	global     *rate.Limiter
	suppressed uint64 // since the last line written
}

// sourceOf is the source (sourceKey) of remoteAddr, an http.Request's
// RemoteAddr ("host:port"); one that does not parse counts as one shared
// source, the zero Prefix.
func sourceOf(remoteAddr string) netip.Prefix {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return netip.Prefix{}
	}
	return sourceKey(ap.Addr())
}

// allow reports whether a line about a request from remoteAddr fits the
// budget now and, if so, how many lines were suppressed since the last
// one written.
func (rl *rateLog) allow(remoteAddr string) (bool, uint64) {
	key := sourceOf(remoteAddr)
	rl.mu.Lock()
	defer rl.mu.Unlock()
	now := time.Now()
	if rl.now != nil {
		now = rl.now()
	}
	if rl.global == nil {
		rl.global = rate.NewLimiter(refusalLogRate, refusalLogBurst)
		rl.last = make(map[netip.Prefix]time.Time)
	}
	// The source's budget first, so that a source over its own budget
	// does not spend the global one.
	if t, ok := rl.last[key]; ok && now.Sub(t) < refusalLogInterval || !rl.global.AllowN(now, 1) {
		rl.suppressed++
		rl.suppressedTotal.Add(1)
		return false, 0
	}
	if _, ok := rl.last[key]; !ok && len(rl.last) >= refusalLogSources {
		rl.forget(now)
	}
	rl.last[key] = now
	n := rl.suppressed
	rl.suppressed = 0
	return true, n
}

// forget drops the sources whose last line is older than the interval
// (they are within budget again), or all of them if none is. rl.mu is
// held.
func (rl *rateLog) forget(now time.Time) {
	for k, t := range rl.last {
		if now.Sub(t) >= refusalLogInterval {
			delete(rl.last, k)
		}
	}
	if len(rl.last) >= refusalLogSources {
		clear(rl.last)
	}
}

// logRefused logs a refused CONNECT-IP request (serveIP) to log within
// the budget of its source and of all: a flood of refusals is not a flood
// of lines.
func (s *Server) logRefused(r *http.Request, log *slog.Logger, level slog.Level, args ...any) {
	s.counters.refusalLog.log(r.Context(), log, level, r.RemoteAddr, "request refused", args...)
}

// logRefused is Server.logRefused for CONNECT-UDP requests.
func (p *udpProxy) logRefused(r *http.Request, log *slog.Logger, level slog.Level, args ...any) {
	p.counters.refusalLog.log(r.Context(), log, level, r.RemoteAddr, "udp request refused", args...)
}

// log writes msg with args at level to l if the budget allows, adding
// suppressed=N when lines were suppressed since the last one written.
func (rl *rateLog) log(ctx context.Context, l *slog.Logger, level slog.Level, remoteAddr, msg string, args ...any) {
	if !l.Enabled(ctx, level) {
		return
	}
	ok, n := rl.allow(remoteAddr)
	if !ok {
		return
	}
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	l.Log(ctx, level, msg, args...)
}
