package e2e

import (
	"encoding/json"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// notifySocket is a unixgram socket like the one systemd listens on for a
// Type=notify service: each datagram is one notification.
type notifySocket struct {
	path string
	msgs chan string
}

// listenNotify listens on a notify socket in a temporary directory until
// the test ends. Unix sockets with a path work across network namespaces.
func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	ns := &notifySocket{path: filepath.Join(t.TempDir(), "notify"), msgs: make(chan string, 16)}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: ns.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	// readLoop: ends when the Cleanup below closes c.
	wg.Go(func() {
		defer close(ns.msgs)
		b := make([]byte, 4096)
		for {
			n, err := c.Read(b)
			if err != nil {
				return
			}
			ns.msgs <- string(b[:n])
		}
	})
	t.Cleanup(func() { c.Close(); wg.Wait() })
	return ns
}

// next returns the next notification, waiting up to d.
func (ns *notifySocket) next(t *testing.T, d time.Duration, what string) string {
	t.Helper()
	select {
	case m, ok := <-ns.msgs:
		if !ok {
			t.Fatalf("%s: notify socket closed", what)
		}
		return m
	case <-time.After(d):
		t.Fatalf("%s: no notification within %v", what, d)
		return ""
	}
}

// TestSystemdNotify: masqued started as a Type=notify service sends
// READY=1 only once it listens with its TUN and NAT in place, RELOADING=1
// then READY=1 around a SIGHUP, and STOPPING=1 when SIGTERM makes it
// drain; each notification carries a STATUS= line. The run (JSON logs)
// has nothing at WARN or above.
func TestSystemdNotify(t *testing.T) {
	tp := newTopo(t, false)
	sock := listenNotify(t)
	argv := append([]string{"env", "NOTIFY_SOCKET=" + sock.path}, serverArgv(t, "--log-format", "json")...)
	p := startProc(t, tp.server, "masqued", argv...)
	p.grace = 15 * time.Second
	p.wantExit0 = true

	// The first notification is READY=1; by then masqued listens.
	ready := sock.next(t, 15*time.Second, "start")
	listening := runIn(t, tp.server, 5*time.Second, "ss", "-Hlun", "sport = :4433").stdout
	tuns := tunLinks(t, tp.server)
	nat := runIn(t, tp.server, 5*time.Second, "nft", "list", "table", "inet", "masqued")
	want := regexp.MustCompile(`^READY=1\nSTATUS=serving on ` + regexp.QuoteMeta(serverAddr) + `: 0 sessions$`)
	if !want.MatchString(ready) {
		t.Fatalf("first notification %q, want %s", ready, want)
	}
	if !strings.Contains(listening, serverAddr) {
		t.Errorf("at READY=1 no UDP socket listens on %s (ss: %q)", serverAddr, listening)
	}
	if len(tuns) == 0 || nat.code != 0 {
		t.Errorf("at READY=1: TUN links %v, nft table inet masqued exit %d; want the TUN and the NAT set up", tuns, nat.code)
	}
	if _, err := p.waitLine(p.stderr, 5*time.Second, func(l string) bool { return strings.Contains(l, `"msg":"listening"`) }); err != nil {
		t.Errorf("after READY=1: %v", err)
	}
	srv := &server{proc: p, ns: tp.server}
	if v, ok := metricValue(srv.metrics(t), "masque_build_info", `version="`, `revision="`, `goversion="go`); !ok || v != 1 {
		t.Errorf("masque_build_info = %v (found %v), want 1 with version, revision and goversion", v, ok)
	}

	p.signal(syscall.SIGHUP)
	reloading := regexp.MustCompile(`^RELOADING=1\nMONOTONIC_USEC=[1-9][0-9]*\nSTATUS=reloading the configuration$`)
	if got := sock.next(t, 10*time.Second, "SIGHUP"); !reloading.MatchString(got) {
		t.Errorf("after SIGHUP: notification %q, want %s", got, reloading)
	}
	if got := sock.next(t, 10*time.Second, "reload"); !want.MatchString(got) {
		t.Errorf("after the reload: notification %q, want %s", got, want)
	}

	p.signal(syscall.SIGTERM)
	stopping := regexp.MustCompile(`^STOPPING=1\nSTATUS=draining 0 sessions for up to ` + regexp.QuoteMeta(e2eDrain.String()) + `$`)
	if got := sock.next(t, 10*time.Second, "SIGTERM"); !stopping.MatchString(got) {
		t.Errorf("after SIGTERM: notification %q, want %s", got, stopping)
	}
	if !p.wait(15 * time.Second) {
		t.Fatal("masqued still runs 15 s after SIGTERM")
	}
	if p.exitCode() != 0 {
		t.Errorf("masqued after SIGTERM: %s, want exit 0", p.exitString())
	}
	select {
	case m, ok := <-sock.msgs:
		if ok {
			t.Errorf("notification %q after STOPPING=1, want none", m)
		}
	default:
	}

	for _, l := range nonEmptyLines(p.stderr.String()) {
		var line struct{ Level, Msg string }
		if err := json.Unmarshal([]byte(l), &line); err != nil {
			t.Errorf("--log-format json: stderr line %q is not JSON: %v", l, err)
			continue
		}
		if line.Level == "WARN" || line.Level == "ERROR" {
			t.Errorf("a clean run logged at %s: %s", line.Level, l)
		}
	}
}

// TestClientSystemdNotify: masque up started as a Type=notify service
// (masque@.service) says it is connecting, sends READY=1 only once the
// tunnel is up (the up line printed, the TUN and the kill switch in
// place), and STOPPING=1 when SIGTERM ends it.
func TestClientSystemdNotify(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	sock := listenNotify(t)
	stateDir := t.TempDir()
	argv := append([]string{"env", "NOTIFY_SOCKET=" + sock.path}, clientArgv(stateDir, tokenAuth("alice"))...)
	p := startProc(t, tp.client, "masque up", argv...)
	p.grace = 10 * time.Second
	p.wantExit0 = true

	if got, want := sock.next(t, 20*time.Second, "start"), "STATUS=connecting to "+serverAddr; got != want {
		t.Errorf("first notification %q, want %q", got, want)
	}
	ready := sock.next(t, 20*time.Second, "tunnel up")
	tuns := tunLinks(t, tp.client)
	ks := runIn(t, tp.client, 5*time.Second, "nft", "list", "tables")
	want := regexp.MustCompile(`^READY=1\nSTATUS=up: server=` + regexp.QuoteMeta(serverAddr) + ` addresses=100\.64\.0\.\d+/32,fd6d:6173:7175:6500::[0-9a-f]+/128 tun=masque0$`)
	if !want.MatchString(ready) {
		t.Fatalf("notification after connecting %q, want %s", ready, want)
	}
	if !containsStr(tuns, "masque0") || !strings.Contains(ks.stdout, "masque_killswitch") {
		t.Errorf("at READY=1: TUN links %v, nft tables %q; want masque0 and the kill switch", tuns, ks.stdout)
	}
	if _, err := p.waitLine(p.stdout, 5*time.Second, func(l string) bool { return strings.HasPrefix(l, "up: ") }); err != nil {
		t.Errorf("after READY=1: %v", err)
	}
	checkPing(t, tp.client, 1)

	p.signal(syscall.SIGTERM)
	if got, want := sock.next(t, 10*time.Second, "SIGTERM"), "STOPPING=1\nSTATUS=going down: restoring the host"; got != want {
		t.Errorf("after SIGTERM: notification %q, want %q", got, want)
	}
	if !p.wait(10*time.Second) || p.exitCode() != 0 {
		t.Errorf("masque up after SIGTERM: %s, want exit 0", p.exitString())
	}
	tp.checkClean(tp.client)
}
