package quicio

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// TestQlogTracer: with the tracer on both sides, each writes its qlog of
// the connection into its directory (0700; files 0600) by the time the
// connection is closed.
func TestQlogTracer(t *testing.T) {
	srvDir, cliDir := filepath.Join(t.TempDir(), "server"), filepath.Join(t.TempDir(), "client")
	st, err := QlogTracer(srvDir)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := QlogTracer(cliDir)
	if err != nil {
		t.Fatal(err)
	}
	app := newFakeApp(true)
	ts := startServer(t, Config{QUICConfig: &quic.Config{Tracer: st}}, app)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, DialConfig{Addr: ts.Addr().String(), TLSConfig: clientTLS(t), QUICConfig: &quic.Config{Tracer: ct}})
	if err != nil {
		t.Fatal(err)
	}
	echo(t, c.Conn, "hello")
	c.Close()
	for _, tt := range []struct{ dir, role string }{{cliDir, "client"}, {srvDir, "server"}} {
		if fi, err := os.Stat(tt.dir); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("qlog dir %s: %v, %v; want mode 0700", tt.dir, fi, err)
		}
		var body string
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			files, _ := filepath.Glob(filepath.Join(tt.dir, "*_"+tt.role+".sqlog"))
			if len(files) == 1 {
				b, _ := os.ReadFile(files[0])
				if body = string(b); strings.Contains(body, "connection_closed") {
					break
				}
			}
		}
		if !strings.Contains(body, "transport:connection_started") || !strings.Contains(body, "connection_closed") {
			t.Errorf("%s qlog lacks the connection's start and close:\n%.400s", tt.role, body)
		}
	}
}
