package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestQlog: --qlog on masqued and on masque up each write a qlog of the
// tunnel's QUIC connection.
func TestQlog(t *testing.T) {
	tp := newTopo(t, false)
	srvDir, cliDir := filepath.Join(t.TempDir(), "q"), filepath.Join(t.TempDir(), "q")
	srv := tp.startServer(t, "--qlog", srvDir)
	c := tp.startClient(t, tp.client, tokenAuth("alice"), "--qlog", cliDir)
	checkPing(t, tp.client, 1)
	c.stop(10 * time.Second)
	srv.stop(10 * time.Second)
	for _, tt := range []struct{ dir, role string }{{cliDir, "client"}, {srvDir, "server"}} {
		files, _ := filepath.Glob(filepath.Join(tt.dir, "*_"+tt.role+".sqlog"))
		if len(files) == 0 {
			t.Errorf("no %s qlog in %s", tt.role, tt.dir)
			continue
		}
		b, _ := os.ReadFile(files[0])
		if !strings.Contains(string(b), "transport:connection_started") {
			t.Errorf("%s qlog %s lacks connection_started:\n%.300s", tt.role, files[0], b)
		}
	}
}
