package main

// poolwalk: one authenticated session walks the address pool with
// ADDRESS_REQUEST capsules (RFC 9484 §4.7.2), each asking for thousands of
// specific addresses, to make the server grant (and then keep reserved)
// as many as it will.

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"time"
)

type poolwalk struct {
	capsules, entries int
	pool              string
}

func poolwalkFlags(fs *flag.FlagSet) *poolwalk {
	p := &poolwalk{}
	fs.IntVar(&p.capsules, "capsules", 17, "ADDRESS_REQUEST capsules")
	fs.IntVar(&p.entries, "entries", 4000, "addresses requested per capsule")
	fs.StringVar(&p.pool, "pool", "100.64.0.0/16", "prefix to walk, from its third address on")
	return p
}

// walkReport is the output line.
type walkReport struct {
	Event    string `json:"event"` // "done"
	Initial  string `json:"initial"`
	Requests int    `json:"requests"` // capsules sent
	Answers  int    `json:"answers"`  // ADDRESS_ASSIGN capsules received after the first
	// Distinct is the number of distinct addresses the answers assigned,
	// the first assignment's included; Changes is Distinct - 1.
	Distinct int     `json:"distinct"`
	Changes  int     `json:"changes"`
	Last     string  `json:"last,omitempty"` // the session's address in the last answer
	Seconds  float64 `json:"seconds"`
	Error    string  `json:"error,omitempty"` // why the answers stopped early
	closeInfo
}

func (p *poolwalk) run(ctx context.Context, d *dialer, c common) error {
	token, err := readToken(c.tokenFile)
	if err != nil {
		return err
	}
	pool, err := netip.ParsePrefix(p.pool)
	if err != nil || !pool.Addr().Is4() {
		return fmt.Errorf("-pool %q: want an IPv4 prefix", p.pool)
	}
	h, err := d.openH3(ctx, quicConfig(true), defaultSettings)
	if err != nil {
		return err
	}
	defer h.close()
	rq, as, err := h.session(ctx, connectIPFields(d.authority, bearer(token)...), nil)
	if err != nil {
		return fmt.Errorf("session: %w", err)
	}
	rep := walkReport{Event: "done"}
	seen := map[netip.Addr]bool{}
	note := func(es []addressEntry) string {
		last := ""
		for _, e := range es {
			if a := e.prefix.Addr(); a.Is4() && !a.IsUnspecified() {
				seen[a] = true
				last = a.String()
			}
		}
		return last
	}
	rep.Initial = note(as)

	start := time.Now()
	// The requests go out from a goroutine of their own and the answers
	// are read here, so that neither side's flow control stalls the walk.
	a := pool.Addr().Next().Next()
	var id uint64 = 1
	writeErr := make(chan error, 1)
	var reqs [][]byte
	for range p.capsules {
		es := make([]addressEntry, 0, p.entries)
		for range p.entries {
			if !pool.Contains(a) {
				break
			}
			es = append(es, addressEntry{reqID: id, prefix: netip.PrefixFrom(a, 32)})
			id++
			a = a.Next()
		}
		if len(es) == 0 {
			break
		}
		c := appendAddresses(nil, capsuleAddressRequest, es)
		reqs = append(reqs, appendFrame(nil, frameData, c))
	}
	rep.Requests = len(reqs)
	go func() {
		for _, b := range reqs {
			if _, err := rq.str.Write(b); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	}()
	deadline, _ := ctx.Deadline()
	rq.str.SetReadDeadline(deadline)
	for rep.Answers < rep.Requests {
		typ, v, err := rq.readCapsule()
		if err != nil {
			rep.Error = err.Error()
			rep.closeInfo = describe(err)
			break
		}
		if typ != capsuleAddressAssign {
			continue
		}
		es, err := parseAddresses(v)
		if err != nil {
			rep.Error = err.Error()
			break
		}
		rep.Answers++
		if l := note(es); l != "" {
			rep.Last = l
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	if rep.Answers < rep.Requests {
		if ci, closed := connClosed(h.qc); closed {
			rep.closeInfo = ci
		}
	}
	rep.Distinct = len(seen)
	rep.Changes = max(0, len(seen)-1)
	rq.str.Close()
	emit(rep)
	return nil
}
