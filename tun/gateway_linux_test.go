package tun

import (
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/masque-vpn/masque/tun/internal/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestNewGateway(t *testing.T) {
	nstest.New(t)
	g, err := NewGateway(DefaultGatewayTable, "mqtest0")
	if err != nil {
		t.Fatalf("NewGateway() = %v", err)
	}
	defer g.Close()
	if g.Table() != DefaultGatewayTable {
		t.Errorf("Table() = %q, want %q", g.Table(), DefaultGatewayTable)
	}
	if got, ok := nftList(t, DefaultGatewayTable); ok {
		want := "table inet masque_forward {\n" +
			"chain forward {\ntype filter hook forward priority filter; policy accept;\n" +
			`iifname "mqtest0" ct state established,related accept` + "\n" +
			`iifname "mqtest0" drop` + "\n}\n" +
			"chain postrouting {\ntype nat hook postrouting priority srcnat; policy accept;\n" +
			`oifname "mqtest0" masquerade` + "\n}\n}"
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("nft list table inet %s (-want +got):\n%s", DefaultGatewayTable, diff)
		}
	}
	// A leftover is replaced, not doubled.
	g2, err := NewGateway(DefaultGatewayTable, "mqtest0")
	if err != nil {
		t.Fatalf("NewGateway() over a leftover = %v", err)
	}
	if got := natRules(t, DefaultGatewayTable); got != 1 {
		t.Errorf("after replacing the table, %d nat rules, want 1", got)
	}
	if err := g2.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if err := g.Close(); err != nil {
		t.Errorf("Close() of the replaced table = %v, want nil", err)
	}
	if ok, err := TableExists(DefaultGatewayTable); err != nil || ok {
		t.Errorf("TableExists after Close = %v, %v, want false", ok, err)
	}
	for _, tt := range []struct{ table, tun string }{{"", "mq0"}, {"t", ""}, {"t", "a/b"}} {
		if _, err := NewGateway(tt.table, tt.tun); err == nil {
			t.Errorf("NewGateway(%q, %q) = nil error, want one", tt.table, tt.tun)
		}
	}
}

func TestKillSwitchAllowForwardRules(t *testing.T) {
	nstest.New(t)
	ks, err := NewKillSwitch(KillSwitchConfig{Tun: "mqtest0", FwMark: 0x4d51, AllowForward: true})
	if err != nil {
		t.Fatalf("NewKillSwitch() = %v", err)
	}
	defer ks.Close()
	got, ok := nftList(t, DefaultKillSwitchTable)
	if !ok {
		return
	}
	// The kill switch's own chain, and the gateway's chains.
	gw, err := NewGateway(DefaultGatewayTable, "mqtest0")
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	want, _ := nftList(t, DefaultGatewayTable)
	want = want[len("table inet masque_forward {\n"):]
	if i := len(got) - len(want); i < 0 || got[i:] != want {
		t.Errorf("kill switch with AllowForward does not end in the gateway's chains:\n%s\nwant the end:\n%s", got, want)
	}
	if !slices.Contains(strings.Split(got, "\n"), "type filter hook output priority filter; policy drop;") {
		t.Errorf("kill switch with AllowForward lacks its output chain:\n%s", got)
	}
}

// ap is addr:port as a string.
func ap(addr string, port uint16) string {
	return netip.AddrPortFrom(netip.MustParseAddr(addr), port).String()
}

// TestAllowForward: a host behind this one (on the veth mqfw0) reaches a
// remote host through the TUN, masqueraded to the TUN's address, and gets
// the replies; a packet the far side sends on its own to the host behind
// this one is not forwarded, though the TUN forwards IPv4 (AllowForward)
// and the host forwards both families. Both the gateway table and the
// kill switch with AllowForward do this.
func TestAllowForward(t *testing.T) {
	for _, tc := range []struct {
		name string
		open func() (io.Closer, error)
	}{
		{"gateway", func() (io.Closer, error) { return NewGateway(DefaultGatewayTable, "mqtest0") }},
		{"kill switch", func() (io.Closer, error) {
			return NewKillSwitch(KillSwitchConfig{Tun: "mqtest0", FwMark: 0x4d51, AllowForward: true})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nstest.New(t)
			f := newForwardRig(t)
			type family struct{ own, lan, remote string }
			fams := []family{
				{"198.18.50.1", "198.18.60.2", "198.18.70.2"},
				{"2001:db8:50::1", "2001:db8:60::2", "2001:db8:70::2"},
			}
			port := uint16(7000)
			// The control: without the table the far side's packet is
			// forwarded to the host behind this one.
			for _, fm := range fams {
				port++
				f.fromTUN(ap(fm.remote, 5555), ap(fm.lan, port))
				if !f.capture.wait(port, time.Second) {
					t.Fatalf("without the table, %s -> %s:%d from the TUN was not forwarded (the test's set-up is wrong)", fm.remote, fm.lan, port)
				}
			}

			c, err := tc.open()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for _, fm := range fams {
				// Out through the TUN, masqueraded.
				port++
				sport := port
				port++
				dst := netip.AddrPortFrom(netip.MustParseAddr(fm.remote), port)
				pkt, ok := f.intoTUN(netip.AddrPortFrom(netip.MustParseAddr(fm.lan), sport), dst)
				if !ok {
					t.Errorf("%s:%d -> %v was not forwarded into the TUN", fm.lan, sport, dst)
					continue
				}
				src, _, _, err := parseUDP(pkt)
				if err != nil {
					t.Fatal(err)
				}
				if src.Addr() != netip.MustParseAddr(fm.own) {
					t.Errorf("%s:%d -> %v left through the TUN from %v, want the TUN's address %s", fm.lan, sport, dst, src, fm.own)
				}
				// The reply comes back to the host behind this one.
				f.fromTUN(dst.String(), src.String())
				if !f.capture.wait(sport, time.Second) {
					t.Errorf("the reply %v -> %v (for %s:%d) was not forwarded back", dst, src, fm.lan, sport)
				}
				// The far side's own packet is not.
				port++
				f.fromTUN(ap(fm.remote, 5555), ap(fm.lan, port))
				if f.capture.wait(port, 300*time.Millisecond) {
					t.Errorf("%s -> %s:%d, no reply, was forwarded from the TUN", fm.remote, fm.lan, port)
				}
			}
		})
	}
}

// forwardRig is a host with a TUN (mqtest0, an end host's that forwards
// IPv4, 198.18.50.1 and 2001:db8:50::1, with 198.18.70.0/24 and
// 2001:db8:70::/64 routed into it) and a LAN, the veth mqfw0 (198.18.60.1/24,
// 2001:db8:60::1/64) whose far end mqfw1 stands for the hosts behind this
// one (198.18.60.2, 2001:db8:60::2), in the calling thread's namespace.
type forwardRig struct {
	t       *testing.T
	tun     *Device
	pkts    *packetReader
	capture *packetCapture
	nearMAC net.HardwareAddr
}

func newForwardRig(t *testing.T) *forwardRig {
	t.Helper()
	for _, k := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
		if _, err := SetSysctl(k, "1"); err != nil {
			t.Fatal(err)
		}
	}
	d, err := Create(Config{Name: "mqtest0", MTU: 1400, EndHost: true, AllowForward: true, Addrs: []netip.Prefix{
		netip.MustParsePrefix("198.18.50.1/32"), netip.MustParsePrefix("2001:db8:50::1/128"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	tunLink, err := netlink.LinkByName("mqtest0")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"198.18.70.0/24", "2001:db8:70::/64"} {
		_, dst, _ := net.ParseCIDR(p)
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: tunLink.Attrs().Index, Dst: dst}); err != nil {
			t.Fatal(err)
		}
	}
	// As in TestKillSwitchForward: static neighbours whose hardware
	// address is not mqfw1's, so that its own IP stack ignores the frames.
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "mqfw0"}, PeerName: "mqfw1"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	peer, err := netlink.LinkByName("mqfw1")
	if err != nil {
		t.Fatal(err)
	}
	near, err := netlink.LinkByName("mqfw0")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"198.18.60.1/24", "2001:db8:60::1/64"} {
		addr, _ := netlink.ParseAddr(a)
		addr.Flags = unix.IFA_F_NODAD
		if err := netlink.AddrAdd(near, addr); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range []netlink.Link{near, peer} {
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	for _, ip := range []string{"198.18.60.2", "2001:db8:60::2"} {
		if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: near.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: net.ParseIP(ip), HardwareAddr: net.HardwareAddr{0x02, 0, 0, 0x4d, 0x51, 0x02}}); err != nil {
			t.Fatal(err)
		}
	}
	return &forwardRig{t: t, tun: d, pkts: readPackets(t, d), capture: capturePackets(t, peer.Attrs().Index), nearMAC: near.Attrs().HardwareAddr}
}

// fromTUN writes a UDP packet src -> dst (address:port) into the TUN, as
// the tunnel's far side would send it.
func (f *forwardRig) fromTUN(src, dst string) {
	f.t.Helper()
	buf := appendUDP(make([]byte, Headroom, Headroom+128), netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst), []byte("forward?"))
	if _, err := f.tun.Write([][]byte{buf}, Headroom); err != nil {
		f.t.Fatal(err)
	}
}

// intoTUN sends a UDP packet src -> dst from the LAN's far end, as a host
// using this one as its router would, and returns it as the TUN reads it.
func (f *forwardRig) intoTUN(src, dst netip.AddrPort) ([]byte, bool) {
	f.t.Helper()
	proto := uint16(unix.ETH_P_IP)
	if src.Addr().Is6() {
		proto = unix.ETH_P_IPV6
	}
	f.capture.inject(f.t, f.nearMAC, proto, appendUDP(nil, src, dst, []byte("into the tunnel?")))
	timeout := time.After(time.Second)
	for {
		select {
		case p, ok := <-f.pkts.c:
			if !ok {
				return nil, false
			}
			if _, to, _, err := parseUDP(p.pkt); err == nil && to == dst {
				return p.pkt, true
			}
		case <-timeout:
			return nil, false
		}
	}
}
