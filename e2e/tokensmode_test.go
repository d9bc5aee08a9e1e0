package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestTokensFileModeWarning: masqued serves with a tokens file that others
// may read, and says so once, at WARN, naming the file, its mode and the
// fix; a SIGHUP reload does not say it again.
func TestTokensFileModeWarning(t *testing.T) {
	tp := newTopo(t, false)
	b, err := os.ReadFile(env.tokens)
	if err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tokens, 0o644); err != nil {
		t.Fatal(err)
	}
	srv := tp.startServer(t, "--tokens", tokens)
	srv.signal(syscall.SIGHUP)
	if _, err := srv.waitLine(srv.stderr, 10*time.Second, func(l string) bool { return strings.Contains(l, `msg="reload: configuration applied"`) }); err != nil {
		t.Fatal(err)
	}
	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	checkPing(t, tp.client, 1)
	c.stop(10 * time.Second)

	var warned []string
	for _, l := range warnLines(srv.stderr.String()) {
		if strings.Contains(l, "tokens file") {
			warned = append(warned, l)
		}
	}
	if len(warned) != 1 {
		t.Fatalf("masqued warned %d times about the tokens file, want once:\n%s", len(warned), strings.Join(warned, "\n"))
	}
	for _, want := range []string{"path=" + tokens, "mode=0644", "chmod 600", "masqued starts anyway"} {
		if !strings.Contains(warned[0], want) {
			t.Errorf("tokens file warning %q lacks %q", warned[0], want)
		}
	}
}
