package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestTUNIsNotALAN: the client's TUN comes up as an end host's link (issue
// 14): no link-local address, no router advertisements, autoconfiguration
// or redirects taken, strict reverse-path filtering, no forwarding, and
// the kill switch's table has its forward chain.
func TestTUNIsNotALAN(t *testing.T) {
	tp := newTopo(t, false)
	tp.startServer(t)
	// Hosts commonly take router advertisements on new links.
	sysctl(t, tp.client, "net.ipv6.conf.default.accept_ra=1", "net.ipv6.conf.default.autoconf=1")
	c := tp.startClient(t, tp.client, tokenAuth("alice"))
	checkPing(t, tp.client, 2)
	tunName := c.up.tun
	time.Sleep(200 * time.Millisecond) // the kernel's address work is asynchronous
	if r := runIn(t, tp.client, 5*time.Second, "ip", "-6", "-o", "addr", "show", "dev", tunName, "scope", "link"); strings.TrimSpace(r.stdout) != "" {
		t.Errorf("the TUN has link-local addresses:\n%s", r.stdout)
	}
	for key, want := range map[string]string{
		"ipv4/conf/%s/accept_redirects": "0",
		"ipv4/conf/%s/send_redirects":   "0",
		"ipv4/conf/%s/forwarding":       "0",
		"ipv4/conf/%s/rp_filter":        "1",
		"ipv6/conf/%s/addr_gen_mode":    "1",
		"ipv6/conf/%s/accept_ra":        "0",
		"ipv6/conf/%s/autoconf":         "0",
		"ipv6/conf/%s/accept_redirects": "0",
		"ipv6/conf/%s/forwarding":       "0",
	} {
		path := "/proc/sys/net/" + strings.Replace(key, "%s", tunName, 1)
		if r := runIn(t, tp.client, 5*time.Second, "cat", path); strings.TrimSpace(r.stdout) != want {
			t.Errorf("%s = %q, want %s", path, strings.TrimSpace(r.stdout), want)
		}
	}
	r := runIn(t, tp.client, 5*time.Second, "nft", "list", "chain", "inet", "masque_killswitch", "forward")
	for _, want := range []string{"hook forward", `iifname "` + tunName + `" drop`, `oifname "` + tunName + `" drop`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("kill switch forward chain lacks %q:\n%s%s", want, r.stdout, r.stderr)
		}
	}
}
