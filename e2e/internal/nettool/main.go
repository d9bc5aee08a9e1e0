// Command nettool is the traffic generator and sink that the end-to-end tests
// run inside their network namespaces. Every mode is bounded in time and
// bytes, prints "ready" on stdout once its socket is set up (server modes)
// and prints one JSON object with its result on stdout before it exits.
//
// Modes:
//
//	tcpsink  -listen ADDR [-timeout D]           accept one connection, hash everything read
//	tcpsend  -to ADDR -bytes N [-seed S]         send N deterministic bytes, hash them
//	         (-reverse on both: the sink sends, the dialer reads)
//	udpecho  -listen ADDR [-timeout D]           echo every datagram to its sender
//	udpping  -to ADDR -n N -tag T [-pps R]       send tagged datagrams, check the echoes byte for byte
//	udpcount -listen ADDR [-timeout D]           count datagrams per tag until SIGTERM or timeout
//	get      -url URL                            print the body of an HTTP GET
//
// It is a test helper: it lives under e2e/internal and is built by the e2e
// TestMain.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "nettool: usage: nettool MODE [flags]")
		os.Exit(2)
	}
	mode, args := os.Args[1], os.Args[2:]
	var err error
	switch mode {
	case "tcpsink":
		err = tcpSink(args)
	case "tcpsend":
		err = tcpSend(args)
	case "udpecho":
		err = udpEcho(args)
	case "udpping":
		err = udpPing(args)
	case "udpcount":
		err = udpCount(args)
	case "get":
		err = get(args)
	case "udprelay":
		err = udpRelay(args)
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "nettool: %s: %v\n", mode, err)
		os.Exit(1)
	}
}

func printJSON(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

func ready() { fmt.Println("ready") }

// signalContext returns a context that ends on SIGINT/SIGTERM or after d.
func signalContext(d time.Duration) (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, d)
	return ctx, func() { cancel(); stop() }
}

// TCPResult is what tcpsink and tcpsend print.
type TCPResult struct {
	Bytes   int64   `json:"bytes"`
	SHA256  string  `json:"sha256"`
	Seconds float64 `json:"seconds"`
	Peer    string  `json:"peer,omitempty"`
}

func tcpSink(args []string) error {
	fs := flag.NewFlagSet("tcpsink", flag.ExitOnError)
	listen := fs.String("listen", ":9100", "listen address")
	timeout := fs.Duration("timeout", 150*time.Second, "give up after this long")
	reverse := fs.Bool("reverse", false, "send -bytes (as tcpsend does) instead of reading")
	total := fs.Int64("bytes", 1<<20, "bytes to send with -reverse")
	seed := fs.Uint64("seed", 1, "PRNG seed of the payload with -reverse")
	rate := fs.Int64("rate", 0, "bytes per second at most with -reverse (0: as fast as possible)")
	fs.Parse(args)

	ctx, cancel := signalContext(*timeout)
	defer cancel()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	context.AfterFunc(ctx, func() { ln.Close() })
	ready()
	c, err := ln.Accept()
	ln.Close()
	if err != nil {
		return fmt.Errorf("accept: %w", err)
	}
	defer c.Close()
	context.AfterFunc(ctx, func() { c.Close() })
	var res TCPResult
	if *reverse {
		res, err = sendStream(c, *total, *seed, *rate)
	} else {
		res, err = readStream(c)
	}
	if err != nil {
		return err
	}
	res.Peer = c.RemoteAddr().String()
	printJSON(res)
	return nil
}

// readStream hashes everything c delivers until EOF.
func readStream(c net.Conn) (TCPResult, error) {
	start := time.Now()
	h := sha256.New()
	n, err := io.CopyBuffer(h, c, make([]byte, 256<<10))
	if err != nil {
		return TCPResult{}, fmt.Errorf("read after %d bytes: %w", n, err)
	}
	return TCPResult{Bytes: n, SHA256: hex.EncodeToString(h.Sum(nil)), Seconds: time.Since(start).Seconds()}, nil
}

func tcpSend(args []string) error {
	fs := flag.NewFlagSet("tcpsend", flag.ExitOnError)
	to := fs.String("to", "", "destination address")
	total := fs.Int64("bytes", 1<<20, "bytes to send")
	seed := fs.Uint64("seed", 1, "PRNG seed of the payload")
	timeout := fs.Duration("timeout", 120*time.Second, "give up after this long")
	rate := fs.Int64("rate", 0, "bytes per second at most (0: as fast as possible)")
	reverse := fs.Bool("reverse", false, "read what the peer (tcpsink -reverse) sends instead of sending")
	fs.Parse(args)

	ctx, cancel := signalContext(*timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", *to)
	if err != nil {
		return err
	}
	defer c.Close()
	context.AfterFunc(ctx, func() { c.Close() })
	var res TCPResult
	if *reverse {
		res, err = readStream(c)
	} else {
		res, err = sendStream(c, *total, *seed, *rate)
	}
	if err != nil {
		return err
	}
	printJSON(res)
	return nil
}

// sendStream writes total deterministic bytes (seeded) to c, at most rate
// bytes a second, hashing them, then half-closes and waits for the peer to
// close, so that the time covers delivery.
func sendStream(c net.Conn, total int64, seed uint64, rate int64) (TCPResult, error) {
	start := time.Now()
	rng := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)}))
	h := sha256.New()
	buf := make([]byte, 256<<10)
	if rate > 0 {
		buf = buf[:min(int64(len(buf)), max(rate/10, 1))] // ten writes a second
	}
	var sent int64
	for sent < total {
		if rate > 0 {
			if ahead := time.Duration(float64(sent)/float64(rate)*float64(time.Second)) - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
		b := buf[:min(int64(len(buf)), total-sent)]
		for i := 0; i+8 <= len(b); i += 8 {
			binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
		}
		h.Write(b)
		n, err := c.Write(b)
		sent += int64(n)
		if err != nil {
			return TCPResult{}, fmt.Errorf("write after %d bytes: %w", sent, err)
		}
	}
	if tc, ok := c.(*net.TCPConn); ok {
		if err := tc.CloseWrite(); err != nil {
			return TCPResult{}, err
		}
		io.Copy(io.Discard, c)
	}
	return TCPResult{Bytes: sent, SHA256: hex.EncodeToString(h.Sum(nil)), Seconds: time.Since(start).Seconds()}, nil
}

func udpEcho(args []string) error {
	fs := flag.NewFlagSet("udpecho", flag.ExitOnError)
	listen := fs.String("listen", ":9000", "listen address")
	timeout := fs.Duration("timeout", 5*time.Minute, "exit after this long")
	fs.Parse(args)

	ctx, cancel := signalContext(*timeout)
	defer cancel()
	pc, err := (&net.ListenConfig{Control: bigBuffers}).ListenPacket(ctx, "udp", *listen)
	if err != nil {
		return err
	}
	context.AfterFunc(ctx, func() { pc.Close() })
	ready()
	buf := make([]byte, 65535)
	var n int64
	for {
		m, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				printJSON(map[string]int64{"echoed": n})
				return nil
			}
			return err
		}
		if _, err := pc.WriteTo(buf[:m], addr); err == nil {
			n++
		}
	}
}

// payload returns the deterministic datagram body for (tag, seq): the tag,
// a '|', the big-endian sequence number and filler whose length varies with
// seq, so that many sizes are exercised.
func payload(tag string, seq uint32, maxSize int) []byte {
	size := 16 + int(seq*37)%max(1, maxSize-16-len(tag))
	b := make([]byte, 0, len(tag)+5+size)
	b = append(b, tag...)
	b = append(b, '|')
	b = binary.BigEndian.AppendUint32(b, seq)
	x := seq*2654435761 + 1
	for range size {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b = append(b, byte(x))
	}
	return b
}

// UDPPingResult is what udpping prints.
type UDPPingResult struct {
	Sent       int     `json:"sent"`
	Received   int     `json:"received"`   // distinct sequence numbers echoed byte-exact
	Duplicates int     `json:"duplicates"` // repeated echoes of a sequence number
	Corrupt    int     `json:"corrupt"`    // own tag, but bytes differ from what was sent
	Foreign    int     `json:"foreign"`    // datagrams with another tag or unparsable
	Seconds    float64 `json:"seconds"`
	Missing    string  `json:"missing,omitempty"` // the sequence numbers never echoed, as ranges (first 20)
}

func udpPing(args []string) error {
	fs := flag.NewFlagSet("udpping", flag.ExitOnError)
	to := fs.String("to", "", "echo server address")
	n := fs.Int("n", 1000, "datagrams to send")
	tag := fs.String("tag", "t", "tag that starts every payload")
	pps := fs.Int("pps", 2000, "datagrams per second")
	maxSize := fs.Int("max-size", 1200, "largest payload")
	wait := fs.Duration("wait", 3*time.Second, "how long to wait for echoes after the last send")
	fs.Parse(args)
	if *tag == "" || bytes.ContainsRune([]byte(*tag), '|') {
		return errors.New("bad tag")
	}

	c, err := (&net.Dialer{Control: bigBuffers}).Dial("udp", *to)
	if err != nil {
		return err
	}
	defer c.Close()
	got := make([]bool, *n)
	var res UDPPingResult
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			m, err := c.Read(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					return
				}
				if errors.Is(err, net.ErrClosed) {
					return
				}
				// ICMP errors (connection refused) surface here; keep reading.
				continue
			}
			b := buf[:m]
			i := bytes.IndexByte(b, '|')
			mu.Lock()
			switch {
			case i < 0 || string(b[:i]) != *tag || m < i+5:
				res.Foreign++
			default:
				seq := binary.BigEndian.Uint32(b[i+1:])
				switch {
				case int(seq) >= *n || !bytes.Equal(b, payload(*tag, seq, *maxSize)):
					res.Corrupt++
				case got[seq]:
					res.Duplicates++
				default:
					got[seq] = true
					res.Received++
				}
			}
			mu.Unlock()
		}
	}()
	start := time.Now()
	interval := time.Second / time.Duration(max(1, *pps))
	for seq := range *n {
		// Pace against the start time so that sleep granularity does not
		// lower the rate.
		if d := time.Until(start.Add(time.Duration(seq) * interval)); d > 0 {
			time.Sleep(d)
		}
		if _, err := c.Write(payload(*tag, uint32(seq), *maxSize)); err == nil {
			res.Sent++
		}
	}
	// Wait for the stragglers: until every echo arrived or -wait passed.
	deadline := time.Now().Add(*wait)
	for time.Now().Before(deadline) {
		mu.Lock()
		all := res.Received == *n
		mu.Unlock()
		if all {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.SetReadDeadline(time.Now())
	<-done
	mu.Lock()
	defer mu.Unlock()
	res.Seconds = time.Since(start).Seconds()
	res.Missing = missingRanges(got, 20)
	printJSON(res)
	return nil
}

// missingRanges lists the indexes of got that are false as "a-b" ranges,
// at most max of them.
func missingRanges(got []bool, max int) string {
	var parts []string
	for i := 0; i < len(got); i++ {
		if got[i] {
			continue
		}
		j := i
		for j+1 < len(got) && !got[j+1] {
			j++
		}
		if len(parts) == max {
			parts = append(parts, "…")
			break
		}
		if i == j {
			parts = append(parts, fmt.Sprint(i))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", i, j))
		}
		i = j
	}
	return strings.Join(parts, ",")
}

func udpCount(args []string) error {
	fs := flag.NewFlagSet("udpcount", flag.ExitOnError)
	listen := fs.String("listen", ":9200", "listen address")
	timeout := fs.Duration("timeout", 2*time.Minute, "exit after this long")
	fs.Parse(args)

	ctx, cancel := signalContext(*timeout)
	defer cancel()
	pc, err := (&net.ListenConfig{Control: bigBuffers}).ListenPacket(ctx, "udp", *listen)
	if err != nil {
		return err
	}
	context.AfterFunc(ctx, func() { pc.Close() })
	ready()
	counts := map[string]int{}
	sources := map[string]map[string]int{}
	buf := make([]byte, 65535)
	for {
		m, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			return err
		}
		b := buf[:m]
		tag := "?"
		if i := bytes.IndexByte(b, '|'); i >= 0 {
			tag = string(b[:i])
		}
		counts[tag]++
		host, _, _ := net.SplitHostPort(addr.String())
		if sources[tag] == nil {
			sources[tag] = map[string]int{}
		}
		sources[tag][host]++
	}
	printJSON(map[string]any{"counts": counts, "sources": sources})
	return nil
}

func get(args []string) error {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	url := fs.String("url", "", "URL")
	timeout := fs.Duration("timeout", 5*time.Second, "request timeout")
	fs.Parse(args)
	c := &http.Client{Timeout: *timeout}
	resp, err := c.Get(*url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", *url, resp.Status)
	}
	_, err = io.Copy(os.Stdout, resp.Body)
	return err
}

// udpRelay relays one UDP client to a server through a socket of its own,
// duplicating and reordering datagrams at random both ways: with
// probability -dup a datagram is sent twice, with probability -reorder it
// is held back and sent after the next one (or after -hold if none comes).
// It prints counters as JSON when it exits.
func udpRelay(args []string) error {
	fs := flag.NewFlagSet("udprelay", flag.ExitOnError)
	listen := fs.String("listen", "", "address the client sends to")
	to := fs.String("to", "", "server address")
	dup := fs.Float64("dup", 0, "probability of duplicating a datagram")
	reorder := fs.Float64("reorder", 0, "probability of holding a datagram back behind the next one")
	hold := fs.Duration("hold", 5*time.Millisecond, "longest a held datagram waits")
	timeout := fs.Duration("timeout", 5*time.Minute, "exit after this long")
	fs.Parse(args)

	ctx, cancel := signalContext(*timeout)
	defer cancel()
	front, err := net.ListenPacket("udp", *listen)
	if err != nil {
		return err
	}
	defer front.Close()
	server, err := net.ResolveUDPAddr("udp", *to)
	if err != nil {
		return err
	}
	back, err := net.ListenUDP("udp", nil)
	if err != nil {
		return err
	}
	defer back.Close()
	context.AfterFunc(ctx, func() { front.Close(); back.Close() })

	var mu sync.Mutex
	var client net.Addr
	var relayed, duplicated, reordered atomic.Uint64
	// pump copies from src to whatever dst returns, duplicating and
	// reordering. One held datagram per direction at most.
	pump := func(read func([]byte) (int, error), write func([]byte) error) {
		rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
		var held []byte
		timer := time.AfterFunc(time.Hour, func() {})
		var hmu sync.Mutex
		flushHeld := func() {
			hmu.Lock()
			if held != nil {
				write(held)
				held = nil
			}
			hmu.Unlock()
		}
		buf := make([]byte, 65536)
		for {
			n, err := read(buf)
			if err != nil {
				return
			}
			d := append([]byte(nil), buf[:n]...)
			relayed.Add(1)
			if rng.Float64() < *reorder {
				flushHeld()
				hmu.Lock()
				held = d
				hmu.Unlock()
				reordered.Add(1)
				timer.Stop()
				timer = time.AfterFunc(*hold, flushHeld)
				continue
			}
			write(d)
			if rng.Float64() < *dup {
				write(d)
				duplicated.Add(1)
			}
			flushHeld()
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		pump(func(b []byte) (int, error) {
			n, from, err := front.ReadFrom(b)
			if err == nil {
				mu.Lock()
				client = from
				mu.Unlock()
			}
			return n, err
		}, func(b []byte) error { _, err := back.WriteTo(b, server); return err })
	})
	wg.Go(func() {
		pump(func(b []byte) (int, error) {
			n, _, err := back.ReadFrom(b)
			return n, err
		}, func(b []byte) error {
			mu.Lock()
			to := client
			mu.Unlock()
			if to == nil {
				return nil
			}
			_, err := front.WriteTo(b, to)
			return err
		})
	})
	ready()
	wg.Wait()
	printJSON(map[string]uint64{"relayed": relayed.Load(), "duplicated": duplicated.Load(), "reordered": reordered.Load()})
	return nil
}
