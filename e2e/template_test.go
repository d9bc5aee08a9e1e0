package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTemplateAgainstConnectIPGo: connect-ip-go's proxy, its template
// naming its IP address, refuses (400) masque up whose :authority follows
// --server-name; with --template the request's URI and :authority come
// from the template, the tunnel comes up, and pings through it are
// answered (by the proxy).
func TestTemplateAgainstConnectIPGo(t *testing.T) {
	tp := newTopo(t, false)
	// A certificate for a name, so that --server-name differs from the
	// template's host.
	pki := t.TempDir()
	mustRun(t, env.masqued, "cert", "--dir", pki, "--host", "vpn.example")
	const tmpl = "https://" + serverAddr + "/vpn"
	p := startProc(t, tp.server, "connect-ip-go proxy", env.h3attack, "ipproxy", "-listen", serverAddr,
		"-cert", filepath.Join(pki, "server.crt"), "-key", filepath.Join(pki, "server.key"),
		"-template", tmpl, "-assign", "100.64.0.2/32", "-routes", "198.18.2.0/24")
	if _, err := p.waitLine(p.stdout, 10*time.Second, func(l string) bool { return strings.Contains(l, `"event":"listening"`) }); err != nil {
		t.Fatalf("the proxy did not listen: %v\n%s", err, p.stderr.String())
	}
	argv := func(extra ...string) []string {
		return append([]string{env.masque, "up", "--server", serverAddr, "--server-name", "vpn.example",
			"--ca", filepath.Join(pki, "ca.crt"), "--token-file", env.tokenFile["alice"],
			"--route", "198.18.2.0/24", "--connect-timeout", "5s"}, extra...)
	}
	r := runIn(t, tp.client, 20*time.Second, append(argv("--state-dir", t.TempDir()), "--reconnect=false")...)
	if r.code != 1 || !strings.Contains(r.stderr, "400") {
		t.Errorf("masque up without --template: exit %d, stderr %q; want 1 and the proxy's 400", r.code, r.stderr)
	}
	if !strings.Contains(p.stdout.String(), `"authority":"vpn.example:4433"`) {
		t.Errorf("the proxy did not see :authority vpn.example:4433:\n%s", p.stdout.String())
	}
	stateDir := t.TempDir()
	c := tp.startClientArgv(t, tp.client, stateDir, argv("--state-dir", stateDir, "--template", tmpl))
	if pr := ping(t, tp.client, targetIP4, 3); pr.received != 3 {
		t.Errorf("ping through connect-ip-go's proxy: %d/3", pr.received)
	}
	if !strings.Contains(p.stdout.String(), `{"authority":"`+serverAddr+`","event":"session"}`) {
		t.Errorf("the proxy's session did not have :authority %s:\n%s", serverAddr, p.stdout.String())
	}
	c.stop(10 * time.Second)
	tp.checkClean(tp.client)
}
