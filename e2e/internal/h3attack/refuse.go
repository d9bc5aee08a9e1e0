package main

// refuse: a flood of requests the server must refuse (no or a wrong
// token), for the log budget: each refusal costs the attacker one request
// stream, and must not cost the server a log line.

import (
	"context"
	"flag"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type refuse struct {
	n, conns, inFlight int
}

func refuseFlags(fs *flag.FlagSet) *refuse {
	r := &refuse{}
	fs.IntVar(&r.n, "n", 5000, "requests in all")
	fs.IntVar(&r.conns, "c", 8, "connections at once")
	fs.IntVar(&r.inFlight, "p", 4, "requests in flight per connection")
	return r
}

// refuseReport is the output line.
type refuseReport struct {
	Event       string         `json:"event"` // "done"
	Requests    int64          `json:"requests"`
	Answered    int64          `json:"answered"`
	Statuses    map[string]int `json:"statuses"`
	Errors      map[string]int `json:"errors,omitempty"`
	Connections int64          `json:"connections"`
	Closes      map[string]int `json:"closes,omitempty"` // close code → connections the server closed
	Seconds     float64        `json:"seconds"`
}

func (r *refuse) run(ctx context.Context, d *dialer, c common) error {
	token, err := readToken(c.wrongFile)
	if err != nil {
		return err
	}
	block := appendFrame(nil, frameHeaders, encodeFields(connectIPFields(d.authority, bearer(token)...)))
	var (
		started, answered, conns atomic.Int64
		mu                       sync.Mutex
		rep                      = refuseReport{Event: "done", Statuses: map[string]int{}, Errors: map[string]int{}, Closes: map[string]int{}}
	)
	count := func(m map[string]int, k string) {
		mu.Lock()
		m[k]++
		mu.Unlock()
	}
	begin := time.Now()
	var wg sync.WaitGroup
	for range r.conns {
		wg.Go(func() {
			for ctx.Err() == nil && started.Load() < int64(r.n) {
				h, err := d.openH3(ctx, quicConfig(true), defaultSettings)
				if err != nil {
					if ctx.Err() == nil {
						count(rep.Errors, errorKey(err))
						time.Sleep(50 * time.Millisecond)
					}
					continue
				}
				conns.Add(1)
				var streams sync.WaitGroup
				for range r.inFlight {
					streams.Go(func() {
						for ctx.Err() == nil && h.qc.Context().Err() == nil && started.Add(1) <= int64(r.n) {
							rq, err := h.open(ctx, block)
							if err != nil {
								count(rep.Errors, errorKey(err))
								return
							}
							st, err := rq.response(5 * time.Second)
							rq.reset()
							if err != nil {
								count(rep.Errors, errorKey(err))
								continue
							}
							answered.Add(1)
							count(rep.Statuses, strconv.Itoa(st))
						}
					})
				}
				streams.Wait()
				if ci, closed := connClosed(h.qc); closed && ci.Remote {
					count(rep.Closes, ci.Code)
				}
				h.close()
			}
		})
	}
	wg.Wait()
	rep.Requests = min(started.Load(), int64(r.n))
	rep.Answered = answered.Load()
	rep.Connections = conns.Load()
	rep.Seconds = time.Since(begin).Seconds()
	emit(rep)
	return nil
}

// errorKey shortens an error to a few words, so that errors differing
// only in addresses or IDs count together.
func errorKey(err error) string {
	w := strings.Fields(err.Error())
	if len(w) > 6 {
		w = w[:6]
	}
	return strings.Join(w, " ")
}
