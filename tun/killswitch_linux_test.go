package tun

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"

	"github.com/masque-vpn/masque/tun/internal/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// sendUDP sends one datagram to dst from a fresh socket with the given
// SO_MARK (0: none) and returns sendto's error.
func sendUDP(t *testing.T, dst netip.Addr, mark uint32) error {
	t.Helper()
	network := "udp4"
	if dst.Is6() {
		network = "udp6"
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			if mark != 0 {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
			}
		}); err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(t.Context(), network, ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	_, err = pc.WriteTo([]byte("leak?"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 9)))
	return err
}

func TestKillSwitch(t *testing.T) {
	nstest.New(t)
	// A "physical" link with an IPv4 and an IPv6 network, and a second
	// IPv4 network routed through it that the kill switch allows.
	// (No dummy links on every kernel: a veth pair, its peer unaddressed.)
	phys := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "mqks0"}, PeerName: "mqks1"}
	if err := netlink.LinkAdd(phys); err != nil {
		t.Fatal(err)
	}
	if peer, err := netlink.LinkByName("mqks1"); err != nil || netlink.LinkSetUp(peer) != nil {
		t.Fatalf("veth peer: %v", err)
	}
	for _, a := range []string{"198.18.9.1/24", "2001:db8:9::1/64"} {
		addr, _ := netlink.ParseAddr(a)
		addr.Flags = unix.IFA_F_NODAD
		if err := netlink.AddrAdd(phys, addr); err != nil {
			t.Fatal(err)
		}
	}
	if err := netlink.LinkSetUp(phys); err != nil {
		t.Fatal(err)
	}
	_, allowed, _ := net.ParseCIDR("198.18.10.0/24")
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: phys.Attrs().Index, Dst: allowed}); err != nil {
		t.Fatal(err)
	}
	blocked4, blocked6 := netip.MustParseAddr("198.18.9.2"), netip.MustParseAddr("2001:db8:9::2")
	for _, dst := range []netip.Addr{blocked4, blocked6} {
		if err := sendUDP(t, dst, 0); err != nil {
			t.Fatalf("before the kill switch, sending to %s = %v", dst, err)
		}
	}

	const mark = 0x4d51
	ks, err := NewKillSwitch(KillSwitchConfig{Tun: "mqtest0", FwMark: mark, Allow: []netip.Prefix{netip.MustParsePrefix("198.18.10.0/24")}})
	if err != nil {
		t.Fatalf("NewKillSwitch() = %v", err)
	}
	defer ks.Close()
	if ks.Table() != DefaultKillSwitchTable {
		t.Errorf("Table() = %q, want %q", ks.Table(), DefaultKillSwitchTable)
	}
	for _, tt := range []struct {
		dst     string
		mark    uint32
		allowed bool
	}{
		{"198.18.9.2", 0, false},
		{"2001:db8:9::2", 0, false},
		{"198.18.9.2", mark, true},
		{"2001:db8:9::2", mark, true},
		{"198.18.9.2", mark + 1, false},
		{"198.18.10.7", 0, true},
		{"127.0.0.1", 0, true},
		{"::1", 0, true},
	} {
		err := sendUDP(t, netip.MustParseAddr(tt.dst), tt.mark)
		switch {
		case tt.allowed && err != nil:
			t.Errorf("to %s with mark %#x: %v, want allowed", tt.dst, tt.mark, err)
		case !tt.allowed && !errors.Is(err, unix.EPERM):
			t.Errorf("to %s with mark %#x: %v, want EPERM (dropped by the kill switch)", tt.dst, tt.mark, err)
		}
	}
	if got, ok := nftList(t, DefaultKillSwitchTable); ok {
		for _, want := range []string{
			"type filter hook output priority filter; policy drop;",
			`oifname "lo" accept`,
			`oifname "mqtest0" accept`,
			"meta mark 0x00004d51 accept",
			"ip daddr 198.18.10.0/24 accept",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("nft list table inet %s lacks %q:\n%s", DefaultKillSwitchTable, want, got)
			}
		}
	}

	// A leftover table is replaced, not doubled.
	ks2, err := NewKillSwitch(KillSwitchConfig{Tun: "mqtest0", FwMark: mark})
	if err != nil {
		t.Fatalf("NewKillSwitch() over a leftover = %v", err)
	}
	if err := sendUDP(t, netip.MustParseAddr("198.18.10.7"), 0); !errors.Is(err, unix.EPERM) {
		t.Errorf("after replacing the table without allow, to 198.18.10.7: %v, want EPERM", err)
	}
	if err := ks2.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if err := ks.Close(); err != nil {
		t.Errorf("Close() of the replaced table = %v, want nil", err)
	}
	if ok, err := TableExists(DefaultKillSwitchTable); err != nil || ok {
		t.Errorf("TableExists after Close = %v, %v, want false", ok, err)
	}
	for _, dst := range []netip.Addr{blocked4, blocked6} {
		if err := sendUDP(t, dst, 0); err != nil {
			t.Errorf("after Close, sending to %s = %v", dst, err)
		}
	}
}

func TestKillSwitchConfigValidate(t *testing.T) {
	for _, c := range []KillSwitchConfig{
		{Table: "", Tun: "mq0", FwMark: 1},
		{Table: "t", Tun: "", FwMark: 1},
		{Table: "t", Tun: "mq0", FwMark: 0},
		{Table: "t", Tun: "mq0", FwMark: 1, Allow: []netip.Prefix{{}}},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", c)
		}
	}
	if err := (&KillSwitchConfig{Table: "t", Tun: "mq0", FwMark: 1}).Validate(); err != nil {
		t.Errorf("Validate(valid) = %v", err)
	}
}
