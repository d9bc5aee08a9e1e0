package tunnel

import (
	"context"
	"math/rand/v2"
	"time"
)

// Reconnect backoff: the first attempt at once, then doubling up to
// maxReconnectDelay, each delay ±25% so that a fleet does not return in step.
// A delay counts from the start of the previous attempt, not from its end:
// a dial that times out has retransmitted its Initial with exponential
// backoff (RFC 9002 §6.2.1) and has already been silent for its last
// seconds (from 6.2 s to 10 s with quic-go's 200 ms first PTO and the
// default --connect-timeout). Waiting up to 3.75 s more on top of that
// left the path unprobed for up to 7.5 s, so a path that returned then was
// used only 7.5 s later; issue 6 wants the tunnel back within 5 s.
//
// A session that ends, or hears GOAWAY, less than stableSession after it
// came up counts as a failure too, of the server's making: the delay
// doubles from firstChurnDelay up to maxChurnDelay, so a server that sends
// GOAWAY or closes right after every session gets a connection every 30 s,
// not hundreds a minute. A session that lasted stableSession resets the
// backoff: the next attempt goes at once.
const (
	firstReconnectDelay = 200 * time.Millisecond
	maxReconnectDelay   = 3 * time.Second
	firstChurnDelay     = time.Second
	maxChurnDelay       = 30 * time.Second
	stableSession       = 30 * time.Second
)

// reconnectBackoff spaces one run's connection attempts, across sessions.
// It is used by one goroutine at a time.
type reconnectBackoff struct {
	delay   time.Duration // before the next attempt, from the start of the previous
	started time.Time     // of the previous attempt
}

// wait blocks until the next attempt may start, or ctx is done, and records
// the attempt's start.
func (b *reconnectBackoff) wait(ctx context.Context) error {
	if b.delay > 0 {
		jittered := b.delay*3/4 + rand.N(b.delay/2)
		if wait := time.Until(b.started.Add(jittered)); wait > 0 {
			t := time.NewTimer(wait)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b.started = time.Now()
	return nil
}

// failed notes an attempt that failed (the dial or the request): the delay
// doubles up to maxReconnectDelay, or stays if churn made it longer.
func (b *reconnectBackoff) failed() {
	b.delay = min(max(2*b.delay, firstReconnectDelay), max(maxReconnectDelay, b.delay))
}

// ended notes that a session which came up at up has ended or is moving
// on (GOAWAY).
func (b *reconnectBackoff) ended(up time.Time) {
	if time.Since(up) >= stableSession {
		b.delay = 0
		return
	}
	b.delay = min(max(2*b.delay, firstChurnDelay), maxChurnDelay)
}
