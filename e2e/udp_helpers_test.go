package e2e

// Helpers of the CONNECT-UDP tests: sockets that the test process opens
// inside a namespace (echo servers, a DNS server, an HTTP/3 origin, test
// clients), the masque udp forwarder, and masque-go's own tools built from
// the module proxy.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
	"github.com/vishvananda/netns"
	"golang.org/x/net/dns/dnsmessage"
)

// inNetns runs fn on an OS thread moved into namespace ns. Sockets that fn
// opens stay in ns for their whole life, whichever goroutine uses them
// later. The thread returns to the test's namespace before it is unlocked;
// if it cannot, it stays locked and the runtime ends it with its goroutine,
// so no thread in a foreign namespace goes back to the scheduler.
func inNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns get: %v", err)
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: %v", ns, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %v", ns, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave netns %s: %v", ns, err))
			return // still locked: the thread dies with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// listenUDPIn opens a UDP socket on addr in ns, closed by t's Cleanup.
func listenUDPIn(t *testing.T, ns, addr string) *net.UDPConn {
	t.Helper()
	var pc *net.UDPConn
	err := inNetns(ns, func() error {
		a, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return err
		}
		pc, err = net.ListenUDP("udp", a)
		return err
	})
	if err != nil {
		t.Fatalf("listen udp %s in %s: %v", addr, ns, err)
	}
	bigSocketBuffers(pc)
	t.Cleanup(func() { pc.Close() })
	return pc
}

// dialUDPIn opens a UDP socket in ns connected to raddr, closed by t's
// Cleanup.
func dialUDPIn(t *testing.T, ns, raddr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := inNetns(ns, func() error {
		a, err := net.ResolveUDPAddr("udp", raddr)
		if err != nil {
			return err
		}
		c, err = net.DialUDP("udp", nil, a)
		return err
	})
	if err != nil {
		t.Fatalf("dial udp %s in %s: %v", raddr, ns, err)
	}
	bigSocketBuffers(c)
	t.Cleanup(func() { c.Close() })
	return c
}

// bigSocketBuffers gives a test socket 4 MB buffers (the test runs as
// root), so that the test's own sockets do not lose datagrams under load
// and blame the path.
func bigSocketBuffers(c *net.UDPConn) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) { setForcedBuffers(int(fd), 4<<20) })
}

func setForcedBuffers(fd, n int) {
	syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, n)
	syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_SNDBUFFORCE, n)
}

// serveUDP runs a UDP server on addr in ns until t ends: reply computes the
// answer to each datagram (nil: no answer). It returns the socket's
// address.
func serveUDP(t *testing.T, ns, addr string, reply func(b []byte, from netip.AddrPort) []byte) netip.AddrPort {
	t.Helper()
	pc := listenUDPIn(t, ns, addr)
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(b)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			if out := reply(b[:n], from); out != nil {
				pc.WriteToUDPAddrPort(out, from)
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// echo is a serveUDP reply that sends every datagram back.
func echo(b []byte, _ netip.AddrPort) []byte { return b }

// serveDNS runs a DNS server on addr in ns that answers A queries for the
// names in answers (lower case, with the final dot), NXDOMAIN for other
// names, and nothing at all for names in silent.
func serveDNS(t *testing.T, ns, addr string, answers map[string]netip.Addr, silent ...string) netip.AddrPort {
	t.Helper()
	return serveUDP(t, ns, addr, func(b []byte, _ netip.AddrPort) []byte {
		var p dnsmessage.Parser
		h, err := p.Start(b)
		if err != nil {
			return nil
		}
		q, err := p.Question()
		if err != nil {
			return nil
		}
		name := strings.ToLower(q.Name.String())
		for _, s := range silent {
			if name == s {
				return nil
			}
		}
		rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
		a, ok := answers[name]
		if !ok {
			rh.RCode = dnsmessage.RCodeNameError
		}
		bld := dnsmessage.NewBuilder(nil, rh)
		bld.EnableCompression()
		bld.StartQuestions()
		bld.Question(q)
		bld.StartAnswers()
		if ok && q.Type == dnsmessage.TypeA && a.Is4() {
			bld.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: a.As4()})
		}
		out, err := bld.Finish()
		if err != nil {
			return nil
		}
		return out
	})
}

// dnsQuery builds a query for the A record of name.
func dnsQuery(t *testing.T, id uint16, name string) []byte {
	t.Helper()
	bld := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	bld.StartQuestions()
	bld.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	b, err := bld.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// dnsAnswerA returns the A records of a DNS response and its RCODE.
func dnsAnswerA(b []byte) (id uint16, rcode dnsmessage.RCode, addrs []netip.Addr, err error) {
	var p dnsmessage.Parser
	h, err := p.Start(b)
	if err != nil {
		return 0, 0, nil, err
	}
	if err := p.SkipAllQuestions(); err != nil {
		return 0, 0, nil, err
	}
	for {
		rh, err := p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			return h.ID, h.RCode, addrs, nil
		}
		if err != nil {
			return 0, 0, nil, err
		}
		if rh.Type != dnsmessage.TypeA {
			p.SkipAnswer()
			continue
		}
		r, err := p.AResource()
		if err != nil {
			return 0, 0, nil, err
		}
		addrs = append(addrs, netip.AddrFrom4(r.A))
	}
}

// resolvConf makes processes started in ns with "ip netns exec" use
// nameserver (ip netns exec bind-mounts /etc/netns/NS/resolv.conf over
// /etc/resolv.conf). It must be called before the process starts.
func resolvConf(t *testing.T, ns, nameserver string) {
	t.Helper()
	dir := filepath.Join("/etc/netns", ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	conf := "nameserver " + nameserver + "\noptions timeout:1 attempts:1\n"
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
}

// udpFwd is a running "masque udp".
type udpFwd struct {
	*proc
	ns       string
	stateDir string
	listens  []string // bound local addresses, in the order of the forwards
}

// startUDPForwarder runs "masque udp" against server in ns with the test
// CA and waits for one "udp: ..." line per forward.
func startUDPForwarder(t *testing.T, ns, server string, forwards int, args ...string) *udpFwd {
	t.Helper()
	stateDir := t.TempDir()
	argv := append([]string{env.masque, "udp", "--server", server, "--ca", filepath.Join(env.certDir, "ca.crt"),
		"--state-dir", stateDir, "--log-level", "debug"}, args...)
	p := startProc(t, ns, "masque udp in "+ns, argv...)
	p.grace = 10 * time.Second
	p.wantExit0 = true
	f := &udpFwd{proc: p, ns: ns, stateDir: stateDir}
	deadline := time.Now().Add(20 * time.Second)
	for len(f.listens) < forwards {
		lines, changed := p.stdout.lines()
		f.listens = f.listens[:0]
		for _, l := range lines {
			if rest, ok := strings.CutPrefix(l, "udp: "); ok {
				for _, kv := range strings.Fields(rest) {
					if v, ok := strings.CutPrefix(kv, "listen="); ok {
						f.listens = append(f.listens, v)
					}
				}
			}
		}
		if len(f.listens) >= forwards {
			break
		}
		select {
		case <-changed:
		case <-p.done:
			t.Fatalf("masque udp exited (%s) before it forwarded\nstdout:\n%s\nstderr:\n%s", p.exitString(), p.stdout, tail(p.stderr.String(), 4000))
		case <-time.After(time.Until(deadline)):
			t.Fatalf("masque udp printed no forward lines within 20 s\nstderr:\n%s", tail(p.stderr.String(), 4000))
		}
	}
	return f
}

// udpStatus is the JSON of "masque status --json" of a forwarder.
type udpStatus struct {
	State     string            `json:"state"`
	TxPackets uint64            `json:"tx_packets"`
	RxPackets uint64            `json:"rx_packets"`
	TxBytes   uint64            `json:"tx_bytes"`
	RxBytes   uint64            `json:"rx_bytes"`
	Drops     map[string]uint64 `json:"drops"`
	UDP       struct {
		Flows        int    `json:"flows"`
		FlowsTotal   uint64 `json:"flows_total"`
		FlowsRefused uint64 `json:"flows_refused"`
		MaxPayload   int    `json:"max_payload"`
		LastRefusal  string `json:"last_refusal"`
		Forwards     []struct {
			Listen string `json:"listen"`
			Target string `json:"target"`
			Flows  int    `json:"flows"`
		} `json:"forwards"`
	} `json:"udp"`
}

func (f *udpFwd) status(t *testing.T) udpStatus {
	t.Helper()
	r := runIn(t, f.ns, 10*time.Second, env.masque, "status", "--json", "--state-dir", f.stateDir)
	if r.code != 0 {
		t.Fatalf("masque status --json --state-dir %s: exit %d\n%s%s", f.stateDir, r.code, r.stdout, r.stderr)
	}
	var st udpStatus
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("masque status --json: %v\n%s", err, r.stdout)
	}
	return st
}

// waitUntil polls cond every 50 ms for up to d.
func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// metricOr0 returns a metric's value, 0 if it is absent.
func metricOr0(text, name string, labels ...string) float64 {
	v, _ := metricValue(text, name, labels...)
	return v
}

// masqueGo holds masque-go's cmd/client and cmd/proxy, built once per run.
var masqueGo struct {
	once          sync.Once
	client, proxy string
	err           error
}

// masqueGoVersion and quicGoVersion pin the third-party tools: masque-go's
// release, built against the quic-go this module uses.
const (
	masqueGoVersion = "v0.6.0"
	quicGoVersion   = "v0.64.1"
)

// buildMasqueGo builds masque-go's cmd/client and cmd/proxy from the module
// proxy in a throwaway module under the run's temporary directory: nothing
// is vendored or committed.
func buildMasqueGo(t *testing.T) (client, proxy string) {
	t.Helper()
	masqueGo.once.Do(func() {
		dir := filepath.Join(env.dir, "masque-go")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			masqueGo.err = err
			return
		}
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		masqueGo.client = filepath.Join(dir, "masque-go-client")
		masqueGo.proxy = filepath.Join(dir, "masque-go-proxy")
		steps := [][]string{
			{"mod", "init", "masque-e2e/thirdparty"},
			{"get", "github.com/quic-go/masque-go@" + masqueGoVersion, "github.com/quic-go/quic-go@" + quicGoVersion},
			{"build", "-o", masqueGo.client, "github.com/quic-go/masque-go/cmd/client"},
			{"build", "-o", masqueGo.proxy, "github.com/quic-go/masque-go/cmd/proxy"},
		}
		for _, args := range steps {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			cmd := exec.CommandContext(ctx, goBin, args...)
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
			out, err := cmd.CombinedOutput()
			cancel()
			if err != nil {
				masqueGo.err = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
				return
			}
		}
	})
	if masqueGo.err != nil {
		t.Fatalf("build masque-go %s tools from the module proxy: %v", masqueGoVersion, masqueGo.err)
	}
	return masqueGo.client, masqueGo.proxy
}

// originCert returns a certificate for ip signed by a fresh CA, and the CA
// in PEM.
func originCert(t *testing.T, ip string) (tls.Certificate, []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "masque e2e origin CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: ip},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP(ip)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
}

// serveHTTP3 runs an HTTP/3 origin on addr in ns that answers every GET
// with body.
func serveHTTP3(t *testing.T, ns, addr string, cert tls.Certificate, body string) {
	t.Helper()
	pc := listenUDPIn(t, ns, addr)
	srv := &http3.Server{
		TLSConfig: http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}}),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, body)
		}),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(pc)
	}()
	t.Cleanup(func() {
		srv.Close()
		pc.Close()
		<-done
	})
}
