package tun

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/masque-vpn/masque/tun/internal/nstest"
	"github.com/vishvananda/netlink"
)

// TestLeftoversRemove leaves behind what a killed client leaves, with no
// state file naming it: a detached (persistent) TUN with routes, the policy
// rules, the kill switch table and a resolv.conf backup. Remove deletes all
// of it by name, says so, and finds nothing the second time.
func TestLeftoversRemove(t *testing.T) {
	nstest.New(t)
	const tunName = "mqleft0"
	dir := t.TempDir()
	rc := &ResolvConf{Path: filepath.Join(dir, "resolv.conf"), Backup: filepath.Join(dir, "state", "resolv.conf.orig")}
	const orig = "# the host's own\nnameserver 192.0.2.53\n"
	if err := os.WriteFile(rc.Path, []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := rc.Apply([]netip.Addr{netip.MustParseAddr("198.18.2.53")}); err != nil {
		t.Fatal(err)
	}
	// A persistent TUN with no file descriptor attached: what is left when
	// the process that held it is gone but the link is not.
	tt := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: tunName}, Mode: netlink.TUNTAP_MODE_TUN}
	if err := netlink.LinkAdd(tt); err != nil { // Queues 0: no descriptor kept
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(tt); err != nil {
		t.Fatal(err)
	}
	r := &Routing{Link: tunName, Routes: []netip.Prefix{v4Default, v6Default}}
	if err := r.Apply(); err != nil {
		t.Fatal(err)
	}
	ks, err := NewKillSwitch(KillSwitchConfig{Tun: tunName, FwMark: DefaultFwMark})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ks.Close() })

	l := &Leftovers{Tun: tunName, Routing: &Routing{}, NFTables: []string{DefaultKillSwitchTable}, ResolvConf: rc}
	done, err := l.Remove()
	if err != nil {
		t.Fatalf("Remove() = %v", err)
	}
	want := []string{
		"removed policy routing (4 rules at priority 5200-5201, 2 routes in table 19793)",
		"deleted tun " + tunName,
		"deleted nftables table inet " + DefaultKillSwitchTable,
		"restored " + rc.Path + " from " + rc.Backup,
	}
	if diff := cmp.Diff(want, done); diff != "" {
		t.Errorf("Remove() done (-want +got):\n%s", diff)
	}
	if _, err := netlink.LinkByName(tunName); !isLinkNotFound(err) {
		t.Errorf("LinkByName(%s) after Remove = %v, want not found", tunName, err)
	}
	if rules, routes := routingState(t, r); len(rules) != 0 || len(routes) != 0 {
		t.Errorf("after Remove: rules %q, routes %q, want none", rules, routes)
	}
	if ok, err := TableExists(DefaultKillSwitchTable); err != nil || ok {
		t.Errorf("TableExists(%s) after Remove = %v, %v, want false", DefaultKillSwitchTable, ok, err)
	}
	if b, err := os.ReadFile(rc.Path); err != nil || string(b) != orig {
		t.Errorf("resolv.conf after Remove = %q, %v, want %q", b, err, orig)
	}
	if _, err := os.Stat(rc.Backup); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("backup after Remove: %v, want gone", err)
	}

	done, err = l.Remove()
	if err != nil || len(done) != 0 {
		t.Errorf("second Remove() = %q, %v, want nothing done", done, err)
	}
}

// TestLeftoversKeepsOthers: a link of the TUN's name that is not a TUN
// (a veth, a TAP), and a TUN that a live process holds (ours, or a
// persistent one), are not leftovers.
func TestLeftoversKeepsOthers(t *testing.T) {
	nstest.New(t)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "mqleft1"}, PeerName: "mqleft2"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	d, err := Create(Config{Name: "mqleft3"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "mqleft4"}, Mode: netlink.TUNTAP_MODE_TAP}
	if err := netlink.LinkAdd(tap); err != nil {
		t.Fatal(err)
	}
	// Queues: 1 keeps the queue's file descriptor open.
	held := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "mqleft5"}, Mode: netlink.TUNTAP_MODE_TUN, Queues: 1}
	if err := netlink.LinkAdd(held); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, fd := range held.Fds {
			fd.Close()
		}
	})
	if err := netlink.LinkSetUp(held); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name, link, want string
	}{
		{"veth", "mqleft1", "left link mqleft1 alone: a veth link, not a TUN"},
		{"open tun", "mqleft3", "left tun mqleft3 alone: a process still has it open"},
		{"persistent tun held open", "mqleft5", "left tun mqleft5 alone: a process still has it open"},
		{"tap", "mqleft4", "left link mqleft4 alone: a tuntap link, not a TUN"},
	}
	for _, tt := range tests {
		done, err := (&Leftovers{Tun: tt.link}).Remove()
		if err != nil || len(done) != 1 || !strings.Contains(done[0], tt.want) {
			t.Errorf("%s: Remove() = %q, %v, want %q", tt.name, done, err, tt.want)
		}
		if _, err := netlink.LinkByName(tt.link); err != nil {
			t.Errorf("%s: link %s is gone: %v", tt.name, tt.link, err)
		}
	}
}
