package tunnel

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/masque-vpn/masque/quicio"
)

// nopHost is a Host for tests that never get a session up.
type nopHost struct{}

func (nopHost) Up(context.Context, AgentServer, *Client) (Device, error) {
	return nil, errors.New("no host")
}
func (nopHost) Move(AgentServer, *Client, *Client) error { return errors.New("no host") }
func (nopHost) InnerMTU() int                            { return 1400 }

// TestReconnectSchedule: dials that fail at once are spaced by the growing
// backoff delays (±25%), but after a dial that timed out, which has
// already waited longer than any delay, the next starts at once: the path
// is never left unprobed for the delay on top of the dial's own silent
// tail.
func TestReconnectSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		// How long each attempt's dial takes before it fails.
		took := []time.Duration{0, 0, 0, 0, 0, 0, 10 * time.Second, 10 * time.Second, 0}
		var starts, ends []time.Time
		dial := func(context.Context, AgentServer) (*quicio.ClientConn, error) {
			i := len(starts)
			starts = append(starts, time.Now())
			if i == len(took)-1 {
				cancel()
			}
			time.Sleep(took[i])
			ends = append(ends, time.Now())
			return nil, errors.New("connect: timeout")
		}
		a, err := NewAgent(AgentConfig{Servers: []AgentServer{{Addr: "198.18.1.2:443"}}, Dial: dial,
			Connect: func(context.Context, *quicio.ClientConn, AgentServer) (*Client, error) { panic("no dial succeeds") }, Host: nopHost{}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.reconnect(ctx, 0); !errors.Is(err, context.Canceled) {
			t.Fatalf("reconnect() = %v, want context.Canceled", err)
		}
		if len(starts) != len(took) {
			t.Fatalf("%d attempts, want %d", len(starts), len(took))
		}
		// Attempts 2-7 follow fast failures: 200 ms, 400 ms, … 3 s, ±25%.
		delay := firstReconnectDelay
		for i := 1; i <= 6; i++ {
			got := starts[i].Sub(starts[i-1])
			if lo, hi := delay*3/4, delay*5/4; got < lo || got > hi {
				t.Errorf("attempt %d started %v after attempt %d, want %v ±25%%", i+1, got, i, delay)
			}
			delay = min(2*delay, maxReconnectDelay)
		}
		// Attempts 8 and 9 follow timeouts longer than the delay.
		for i := 7; i <= 8; i++ {
			if got := starts[i].Sub(ends[i-1]); got != 0 {
				t.Errorf("attempt %d started %v after attempt %d timed out, want at once", i+1, got, i)
			}
		}
	})
}

// TestReconnectBackoffHoldsAcrossSessions: a server that ends every
// session (or sends GOAWAY) right after it came up gets a connection less
// and less often, up to one per maxChurnDelay; a session that lasted
// stableSession resets the backoff; failed dials keep their short delays
// unless churn made them longer.
func TestReconnectBackoffHoldsAcrossSessions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := t.Context()
		var bo reconnectBackoff
		start := time.Now()
		attempts := 0
		for time.Since(start) < 5*time.Minute {
			if err := bo.wait(ctx); err != nil {
				t.Fatal(err)
			}
			attempts++
			up := time.Now() // the session comes up at once…
			time.Sleep(100 * time.Millisecond)
			bo.ended(up) // …and ends 100 ms later
		}
		// 1, 2, 4, 8, 16 s, then 30 s (±25%): about 15 in 5 minutes; at
		// worst (every delay 25% short, 0.75+1.5+3+6+12 s then 22.5 s
		// each) 1+5+12 = 18.
		if attempts > 18 {
			t.Errorf("%d connections in 5 minutes against a server that ends each session at once, want at most 18", attempts)
		}
		if bo.delay != maxChurnDelay {
			t.Errorf("delay after the loop = %v, want %v", bo.delay, maxChurnDelay)
		}
		bo.failed()
		if bo.delay != maxChurnDelay {
			t.Errorf("a failed dial cut the churn delay to %v", bo.delay)
		}
		// A session that lasted: the next attempt goes at once.
		up := time.Now()
		time.Sleep(stableSession)
		bo.ended(up)
		before := time.Now()
		if err := bo.wait(ctx); err != nil {
			t.Fatal(err)
		}
		if waited := time.Since(before); waited != 0 {
			t.Errorf("after a stable session the next attempt waited %v, want none", waited)
		}
		bo.failed()
		if bo.delay != firstReconnectDelay {
			t.Errorf("delay after a failed dial = %v, want %v", bo.delay, firstReconnectDelay)
		}
		t.Logf("%d connections in 5 minutes against a closing server", attempts)
	})
}
