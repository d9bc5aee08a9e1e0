package main

import (
	"bytes"
	"log/slog"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// listenNotify listens on a unixgram socket in a temporary directory, as
// systemd does for a Type=notify service, and points $NOTIFY_SOCKET at it.
func listenNotify(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return c
}

// readNotify reads one datagram from c, waiting up to 5 s.
func readNotify(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 4096)
	n, err := c.Read(b)
	if err != nil {
		t.Fatalf("read the notify socket: %v", err)
	}
	return string(b[:n])
}

// TestNotifier: each notification reaches the socket as one datagram of
// VAR=VALUE lines, in the order sent.
func TestNotifier(t *testing.T) {
	c := listenNotify(t)
	var logs bytes.Buffer
	n := &notifier{logger: slog.New(slog.NewTextHandler(&logs, nil))}
	if !n.enabled() {
		t.Fatal("notifier not enabled with NOTIFY_SOCKET set")
	}
	n.ready(servingStatus("198.18.1.2:4433", 0))
	n.reloading()
	n.ready(servingStatus("198.18.1.2:4433", 2))
	n.status(servingStatus("198.18.1.2:4433", 3))
	n.stopping("draining 3 sessions for up to 5s")
	want := []*regexp.Regexp{
		regexp.MustCompile(`^READY=1\nSTATUS=serving on 198\.18\.1\.2:4433: 0 sessions$`),
		regexp.MustCompile(`^RELOADING=1\nMONOTONIC_USEC=[1-9][0-9]*\nSTATUS=reloading the configuration$`),
		regexp.MustCompile(`^READY=1\nSTATUS=serving on 198\.18\.1\.2:4433: 2 sessions$`),
		regexp.MustCompile(`^STATUS=serving on 198\.18\.1\.2:4433: 3 sessions$`),
		regexp.MustCompile(`^STOPPING=1\nSTATUS=draining 3 sessions for up to 5s$`),
	}
	for i, re := range want {
		if got := readNotify(t, c); !re.MatchString(got) {
			t.Errorf("notification %d = %q, want %s", i, got, re)
		}
	}
	if logs.Len() != 0 {
		t.Errorf("notifier logged %q, want nothing", logs.String())
	}
}

// TestNotifierFailure: a socket nobody listens on is logged once, at WARN;
// without NOTIFY_SOCKET nothing is sent or logged.
func TestNotifierFailure(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody"))
	var logs bytes.Buffer
	n := &notifier{logger: slog.New(slog.NewTextHandler(&logs, nil))}
	n.ready("serving")
	n.stopping("draining")
	if got := strings.Count(logs.String(), "\n"); got != 1 || !strings.Contains(logs.String(), `level=WARN msg="cannot notify the service manager"`) {
		t.Errorf("after two failed sends the log is %q, want one WARN line", logs.String())
	}

	t.Setenv("NOTIFY_SOCKET", "")
	logs.Reset()
	n = &notifier{logger: slog.New(slog.NewTextHandler(&logs, nil))}
	if n.enabled() {
		t.Error("notifier enabled without NOTIFY_SOCKET")
	}
	n.ready("serving")
	if logs.Len() != 0 {
		t.Errorf("without NOTIFY_SOCKET the notifier logged %q", logs.String())
	}
}
