package e2e

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The client's LAN gateway, which is also the resolver the client host had
// before the tunnel: an address outside the tunnel that is one hop away on
// c0, so that what leaks towards it really leaves c0 (no ARP miss).
const (
	lanIP4 = serverIP4
	lanIP6 = "2001:db8:1::2"
)

// probeKinds are the kinds of traffic that probeOutside sends and
// leakKinds counts.
var probeKinds = []string{"tcp", "udp", "dns", "icmp"}

// probeOutside sends from ns to each of dsts (IP literals) what an
// application would: a TCP connection attempt (port 80), a UDP datagram
// (port 9000, udpecho's), a DNS query (UDP port 53) and ICMP echo requests
// (every 0.2 s until two replies, for at most 2 s). It returns how many
// were answered, per kind: a connection, a datagram or echo reply, or a
// refusal (TCP RST, ICMP port unreachable); each means that the packet
// reached a host and came back. It takes about 2 s.
func probeOutside(t *testing.T, ns string, dsts ...string) map[string]int {
	t.Helper()
	query := dnsQuery(t, 0x4d51, "leak.masque.test.")
	var (
		mu       sync.Mutex
		answered = map[string]int{}
		errs     []error
		wg       sync.WaitGroup
	)
	count := func(kind string, n int, err error) {
		mu.Lock()
		defer mu.Unlock()
		answered[kind] += n
		if err != nil {
			errs = append(errs, fmt.Errorf("%s probe: %v", kind, err))
		}
	}
	for _, dst := range dsts {
		wg.Go(func() {
			var ok bool
			err := inNetns(ns, func() error {
				c, err := net.DialTimeout("tcp", net.JoinHostPort(dst, "80"), 1500*time.Millisecond)
				if err == nil {
					c.Close()
				}
				ok = err == nil || errors.Is(err, syscall.ECONNREFUSED)
				return nil
			})
			count("tcp", b2i(ok), err)
		})
		wg.Go(func() {
			ok, err := udpProbe(ns, net.JoinHostPort(dst, "9000"), []byte("leak?"))
			count("udp", b2i(ok), err)
		})
		wg.Go(func() {
			ok, err := udpProbe(ns, net.JoinHostPort(dst, "53"), query)
			count("dns", b2i(ok), err)
		})
		wg.Go(func() {
			r, err := runInErr(ns, 10*time.Second, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-w", "2", dst)
			n := 0
			if m := pingCountRE.FindStringSubmatch(r.stdout); m != nil {
				n, _ = strconv.Atoi(m[2])
			}
			count("icmp", n, err)
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatal(errors.Join(errs...))
	}
	return answered
}

// udpProbe sends p from a socket in ns connected to addr and reports
// whether anything came back within 1.5 s: a datagram, or the ICMP port
// unreachable that a connected socket reads as ECONNREFUSED. A send that
// fails (EPERM from a firewall) is no answer.
func udpProbe(ns, addr string, p []byte) (answered bool, err error) {
	err = inNetns(ns, func() error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return nil // no route: nothing left
		}
		defer c.Close()
		if _, err := c.Write(p); err != nil {
			return nil
		}
		c.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
		_, err = c.Read(make([]byte, 1500))
		answered = err == nil || errors.Is(err, syscall.ECONNREFUSED)
		return nil
	})
	return answered, err
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// leakKinds counts tcpdump's lines per kind of traffic: tcp, icmp (and
// ICMPv6), dns (UDP port 53), udp, other.
func leakKinds(lines []string) map[string]int {
	n := map[string]int{}
	for _, l := range lines {
		switch {
		case strings.Contains(l, "Flags ["):
			n["tcp"]++
		case strings.Contains(l, "ICMP"):
			n["icmp"]++
		case strings.Contains(l, ".53: "):
			n["dns"]++
		case strings.Contains(l, "UDP"):
			n["udp"]++
		default:
			n["other"]++
		}
	}
	return n
}

// kindsString formats counts per kind in a fixed order, e.g.
// "tcp 0, udp 0, dns 0, icmp 0".
func kindsString(n map[string]int) string {
	var parts []string
	for _, k := range append(slices.Clone(probeKinds), "other") {
		if k != "other" || n[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, n[k]))
		}
	}
	return strings.Join(parts, ", ")
}

// stopCapture stops a capture and returns its packet lines.
func stopCapture(dump *proc) []string {
	time.Sleep(300 * time.Millisecond) // let the last packets through tcpdump
	dump.stop(5 * time.Second)
	return nonEmptyLines(dump.stdout.String())
}

// checkCaptureSeesAll fails t unless the control capture saw every kind of
// probe, so that a capture that sees nothing later means something.
func checkCaptureSeesAll(t *testing.T, what string, lines []string) {
	t.Helper()
	n := leakKinds(lines)
	t.Logf("%s: the capture saw %s", what, kindsString(n))
	for _, k := range probeKinds {
		if n[k] == 0 {
			t.Fatalf("%s: the capture saw no %s packet, so it cannot see that kind of leak:\n%s", what, k, tail(strings.Join(lines, "\n"), 3000))
		}
	}
}

// checkNoLeak fails t for every packet in a leak capture's lines.
func checkNoLeak(t *testing.T, what string, lines []string) {
	t.Helper()
	t.Logf("%s: %d packets left c0 outside the tunnel (%s)", what, len(lines), kindsString(leakKinds(lines)))
	if len(lines) > 0 {
		t.Errorf("%s: %d packets left c0 outside the tunnel, want 0:\n%s", what, len(lines), tail(strings.Join(lines, "\n"), 3000))
	}
}

// untilReply pings addr from ns every 0.1 s until the first reply, for at
// most d, and returns how long that took; ok is false if no reply came.
func untilReply(t *testing.T, ns, addr string, d time.Duration) (took time.Duration, ok bool) {
	t.Helper()
	start := time.Now()
	r := runIn(t, ns, d+5*time.Second, "ping", "-n", "-c", "1", "-i", "0.1", "-W", "1", "-w", strconv.Itoa(int(d.Seconds())), addr)
	return time.Since(start), r.code == 0
}
