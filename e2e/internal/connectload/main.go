// Command connectload opens many CONNECT-IP sessions (RFC 9484) against a
// masqued, for scripts/bench.sh --scale. Each session is a QUIC connection
// of its own with a full TLS handshake (no resumption), an HTTP/3 extended
// CONNECT with a bearer token and the wait for the server's address
// assignment; it sends no packets.
//
// Two modes:
//
//	-mode churn  open and close sessions with -c workers until -n sessions
//	             or -duration; print the rate and latency percentiles.
//	-mode idle   open -n sessions with -c workers, print a "ready" line,
//	             hold them (QUIC keep-alives) until SIGINT/SIGTERM or
//	             -duration, then close them and print a "done" line.
//	-mode flood  start -rate QUIC handshakes a second, round robin over
//	             the -local addresses, for -duration, at most -c at once
//	             (attempts over that are skipped and counted); each gives
//	             up after -timeout. No request is sent: this is the
//	             handshake flood of a hostile peer. With the server's
//	             answers dropped in front of the tool, it plays a flood
//	             from spoofed addresses.
//
// The server limits concurrent connections per source address, so -local
// spreads the sessions over several local addresses (one UDP socket and
// quic.Transport each). Output is one JSON object per line on stdout.
// Everything is bounded: -duration caps the run, -timeout each session.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/masque-vpn/masque/e2e/internal/localaddr"
	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/yosida95/uritemplate/v3"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "connectload: %v\n", err)
		os.Exit(1)
	}
}

// report is one output line.
type report struct {
	Event    string         `json:"event"` // "ready" (idle mode) or "done"
	Mode     string         `json:"mode"`
	OK       int64          `json:"ok"`                 // sessions established
	Failed   int64          `json:"failed"`             // sessions that failed
	Open     int64          `json:"open"`               // sessions open now (idle mode)
	Attempts int64          `json:"attempts,omitempty"` // handshakes started (flood mode)
	Skipped  int64          `json:"skipped,omitempty"`  // attempts not started: -c in flight (flood mode)
	Seconds  float64        `json:"seconds"`
	Rate     float64        `json:"rate"` // established sessions per second
	P50ms    float64        `json:"p50_ms"`
	P90ms    float64        `json:"p90_ms"`
	P99ms    float64        `json:"p99_ms"`
	MaxMs    float64        `json:"max_ms"`
	Errors   map[string]int `json:"errors,omitempty"` // first words of each error, counted
	Sockets  int            `json:"sockets"`
	Workers  int            `json:"workers"`
	Duration float64        `json:"duration_limit_s"`
}

type loader struct {
	trs      []*quic.Transport
	next     atomic.Uint64
	raddr    *net.UDPAddr
	tmpl     *uritemplate.Template
	token    string
	tlsConf  *tls.Config
	quicConf *quic.Config
	timeout  time.Duration

	mu        sync.Mutex // guards the fields below
	latencies []time.Duration
	errs      map[string]int
	ok, fail  int64
}

// session is an open CONNECT-IP session and its QUIC connection.
type session struct {
	ip *connectip.Conn
	qc *quic.Conn
}

func (s session) close() {
	s.ip.Close()
	s.qc.CloseWithError(0, "")
}

func run() error {
	server := flag.String("server", "198.18.1.2:4433", "masqued address")
	serverName := flag.String("server-name", "", "TLS server name (default: host of -server)")
	caFile := flag.String("ca", "", "CA certificate file")
	tokenFile := flag.String("token-file", "", "file holding the bearer token")
	local := flag.String("local", "", "local addresses to dial from: comma-separated addresses or FIRST-LAST ranges (default: any)")
	mode := flag.String("mode", "churn", "churn, idle or flood")
	rate := flag.Int("rate", 100, "flood: handshakes started per second")
	n := flag.Int("n", 100, "sessions: the total for churn (0: until -duration), the number to hold for idle")
	workers := flag.Int("c", 16, "concurrent dials")
	duration := flag.Duration("duration", 30*time.Second, "churn: how long to run; idle: the longest time to hold the sessions")
	timeout := flag.Duration("timeout", 10*time.Second, "limit for one session to be established")
	flag.Parse()

	if *mode != "churn" && *mode != "idle" && *mode != "flood" {
		return fmt.Errorf("-mode %q: want churn, idle or flood", *mode)
	}
	if *mode == "flood" && (*rate < 1 || *rate > 100000) {
		return fmt.Errorf("-rate %d: want 1-100000", *rate)
	}
	if *workers < 1 || *n < 0 || (*mode == "idle" && *n == 0) {
		return errors.New("-c must be at least 1 and -n positive")
	}
	// connect-ip-go logs dropped packets through the standard logger.
	log.SetOutput(io.Discard)

	raddr, err := net.ResolveUDPAddr("udp", *server)
	if err != nil {
		return err
	}
	if *serverName == "" {
		*serverName = raddr.IP.String()
	}
	pool := x509.NewCertPool()
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return err
		}
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("no certificate in %s", *caFile)
		}
	}
	var token string
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return err
		}
		token = strings.TrimSpace(string(b))
	}
	tmpl, err := uritemplate.New("https://" + *server + "/.well-known/masque/ip/*/*/")
	if err != nil {
		return err
	}
	addrs, err := localaddr.Parse(*local)
	if err != nil {
		return err
	}

	l := &loader{
		raddr:   raddr,
		tmpl:    tmpl,
		token:   token,
		timeout: *timeout,
		errs:    map[string]int{},
		tlsConf: &tls.Config{
			ServerName: *serverName,
			RootCAs:    pool,
			NextProtos: []string{http3.NextProtoH3},
			// No ClientSessionCache: every session is a full handshake.
		},
		quicConf: &quic.Config{
			EnableDatagrams:      true,
			HandshakeIdleTimeout: *timeout,
			MaxIdleTimeout:       60 * time.Second,
			KeepAlivePeriod:      15 * time.Second,
		},
	}
	for _, a := range addrs {
		uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: a.AsSlice()})
		if err != nil {
			return fmt.Errorf("listen on %s: %w", a, err)
		}
		tr := &quic.Transport{Conn: uc}
		defer tr.Close()
		l.trs = append(l.trs, tr)
	}

	ctx, cancel := context.WithTimeout(context.Background(), *duration)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	enc := json.NewEncoder(os.Stdout)
	start := time.Now()
	if *mode == "churn" {
		l.churn(ctx, *n, *workers)
		return enc.Encode(l.report("done", *mode, 0, time.Since(start), *workers, *duration))
	}
	if *mode == "flood" {
		attempts, skipped := l.flood(ctx, *rate, *workers)
		r := l.report("done", *mode, 0, time.Since(start), *workers, *duration)
		r.Attempts, r.Skipped = attempts, skipped
		return enc.Encode(r)
	}

	sessions := l.openIdle(ctx, *n, *workers)
	if err := enc.Encode(l.report("ready", *mode, int64(len(sessions)), time.Since(start), *workers, *duration)); err != nil {
		return err
	}
	// Hold until told to stop; count the sessions that are still alive.
	<-ctx.Done()
	var open int64
	for _, s := range sessions {
		if s.qc.Context().Err() == nil {
			open++
		}
	}
	var wg sync.WaitGroup
	for _, s := range sessions {
		wg.Go(s.close)
	}
	wg.Wait()
	return enc.Encode(l.report("done", *mode, open, time.Since(start), *workers, *duration))
}

// churn runs workers that open and close sessions until n are done (n > 0)
// or ctx ends.
func (l *loader) churn(ctx context.Context, n, workers int) {
	var started atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil && (n == 0 || started.Add(1) <= int64(n)) {
				if s, ok := l.open(ctx); ok {
					s.close()
				}
			}
		})
	}
	wg.Wait()
}

// flood starts rate handshakes a second until ctx ends, at most inFlight
// at once, and waits for those started. A handshake that completes is
// counted ok and closed at once.
func (l *loader) flood(ctx context.Context, rate, inFlight int) (attempts, skipped int64) {
	sem := make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	start := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return attempts, skipped
		case now := <-tick.C:
		due:
			for want := int64(now.Sub(start).Seconds() * float64(rate)); attempts+skipped < want; {
				select {
				case sem <- struct{}{}:
				default:
					skipped++
					continue
				}
				attempts++
				tr := l.trs[l.next.Add(1)%uint64(len(l.trs))]
				wg.Go(func() {
					defer func() { <-sem }()
					l.handshake(ctx, tr)
				})
				if ctx.Err() != nil {
					break due
				}
			}
		}
	}
}

// handshake runs one QUIC handshake on tr and records its outcome.
func (l *loader) handshake(ctx context.Context, tr *quic.Transport) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.timeout)
	defer cancel()
	begin := time.Now()
	qc, err := tr.Dial(dctx, l.raddr, l.tlsConf, l.quicConf)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.fail++
		l.errs[errorKey(err)]++
		return
	}
	qc.CloseWithError(0, "")
	l.ok++
	l.latencies = append(l.latencies, time.Since(begin))
}

// openIdle opens n sessions with workers and returns those established.
func (l *loader) openIdle(ctx context.Context, n, workers int) []session {
	var (
		mu       sync.Mutex
		sessions []session
		started  atomic.Int64
		wg       sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil && started.Add(1) <= int64(n) {
				if s, ok := l.open(ctx); ok {
					mu.Lock()
					sessions = append(sessions, s)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return sessions
}

// open establishes one session and records its latency or its error.
func (l *loader) open(ctx context.Context) (session, bool) {
	begin := time.Now()
	s, err := l.dial(ctx)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		if ctx.Err() != nil {
			return session{}, false // stopped, not failed
		}
		l.fail++
		l.errs[errorKey(err)]++
		return session{}, false
	}
	l.ok++
	l.latencies = append(l.latencies, time.Since(begin))
	return s, true
}

func (l *loader) dial(ctx context.Context) (session, error) {
	// The session outlives this context: it bounds only the set-up.
	dctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	tr := l.trs[l.next.Add(1)%uint64(len(l.trs))]
	qc, err := tr.Dial(dctx, l.raddr, l.tlsConf, l.quicConf)
	if err != nil {
		return session{}, fmt.Errorf("quic: %w", err)
	}
	fail := func(err error) (session, error) {
		qc.CloseWithError(0, "")
		return session{}, err
	}
	cc, err := (&connectip.Transport{}).NewClientConn(qc)
	if err != nil {
		return fail(err)
	}
	// The request's context is the stream's: keep it for the session's life.
	req, err := connectip.NewRequest(context.WithoutCancel(ctx), l.tmpl)
	if err != nil {
		return fail(err)
	}
	if l.token != "" {
		req.Header().Set("Authorization", "Bearer "+l.token)
	}
	type result struct {
		c   *connectip.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, _, err := cc.Dial(req)
		done <- result{c, err}
	}()
	var ipc *connectip.Conn
	select {
	case r := <-done:
		if r.err != nil {
			return fail(fmt.Errorf("connect-ip: %w", r.err))
		}
		ipc = r.c
	case <-dctx.Done():
		qc.CloseWithError(0, "") // makes the pending Dial return
		return session{}, fmt.Errorf("connect-ip: %w", dctx.Err())
	}
	for {
		aa, err := ipc.ReceiveAddressAssignment(dctx)
		if err != nil {
			ipc.Close()
			return fail(fmt.Errorf("address assignment: %w", err))
		}
		if slices.ContainsFunc(aa, func(a connectip.AssignedAddress) bool { return !a.Rejected() }) {
			return session{ipc, qc}, nil
		}
	}
}

func (l *loader) report(event, mode string, open int64, elapsed time.Duration, workers int, limit time.Duration) report {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := report{
		Event: event, Mode: mode, OK: l.ok, Failed: l.fail, Open: open,
		Seconds: elapsed.Seconds(), Errors: l.errs, Sockets: len(l.trs), Workers: workers,
		Duration: limit.Seconds(),
	}
	if r.Seconds > 0 {
		r.Rate = float64(l.ok) / r.Seconds
	}
	lat := slices.Clone(l.latencies)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000
	}
	r.P50ms, r.P90ms, r.P99ms, r.MaxMs = pct(0.50), pct(0.90), pct(0.99), pct(1)
	return r
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
