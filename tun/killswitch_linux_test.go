package tun

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

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
			"type filter hook forward priority filter; policy accept;",
			`iifname "mqtest0" drop`,
			`oifname "mqtest0" drop`,
		} {
			if !strings.Contains(got, want) {
				t.Errorf("nft list table inet %s lacks %q:\n%s", DefaultKillSwitchTable, want, got)
			}
		}
		// Without AllowForward: nothing of the gateway's.
		for _, bad := range []string{"masquerade", "ct state", "postrouting"} {
			if strings.Contains(got, bad) {
				t.Errorf("nft list table inet %s has %q without AllowForward:\n%s", DefaultKillSwitchTable, bad, got)
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

// TestKillSwitchForward: with forwarding on, a packet that arrives on the
// TUN for a host beyond another link is forwarded there until the kill
// switch is up, and not after; nor is one from that link into the TUN.
// (The TUN has the kernel's defaults, not an end host's sysctls, which
// would stop IPv4 forwarding from it on their own.)
func TestKillSwitchForward(t *testing.T) {
	nstest.New(t)
	for _, k := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv4/conf/all/rp_filter"} {
		if _, err := SetSysctl(k, map[bool]string{true: "0", false: "1"}[strings.HasSuffix(k, "rp_filter")]); err != nil {
			t.Fatal(err)
		}
	}
	d, err := Create(Config{Name: "mqtest0", MTU: 1400, Addrs: []netip.Prefix{
		netip.MustParsePrefix("198.18.50.1/24"), netip.MustParsePrefix("2001:db8:50::1/64"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	pkts := readPackets(t, d)
	// The other link: a veth pair whose far end (mqfw1) sees what is
	// forwarded out of the near one, to static neighbours so that nothing
	// waits for ARP or neighbour discovery. Their hardware address is not
	// mqfw1's, so that its own IP stack, in this namespace too, ignores
	// the frames and does not forward them back.
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "mqfw0"}, PeerName: "mqfw1"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	peer, err := netlink.LinkByName("mqfw1")
	if err != nil {
		t.Fatal(err)
	}
	near, err := netlink.LinkByName("mqfw0") // with its hardware address
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"198.18.60.1/24", "2001:db8:60::1/64"} {
		addr, _ := netlink.ParseAddr(a)
		addr.Flags = unix.IFA_F_NODAD
		if err := netlink.AddrAdd(veth, addr); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range []netlink.Link{veth, peer} {
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	for _, ip := range []string{"198.18.60.2", "2001:db8:60::2"} {
		if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: veth.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: net.ParseIP(ip), HardwareAddr: net.HardwareAddr{0x02, 0, 0, 0x4d, 0x51, 0x02}}); err != nil {
			t.Fatal(err)
		}
	}
	capture := capturePackets(t, peer.Attrs().Index)

	fromTUN := func(src, dst string, port uint16) {
		t.Helper()
		buf := appendUDP(make([]byte, Headroom, Headroom+128),
			netip.AddrPortFrom(netip.MustParseAddr(src), 5555), netip.AddrPortFrom(netip.MustParseAddr(dst), port), []byte("forward?"))
		if _, err := d.Write([][]byte{buf}, Headroom); err != nil {
			t.Fatal(err)
		}
	}
	// intoTUN sends from the peer's side, as a LAN host using this host
	// as its router would, and reports whether the TUN got it.
	intoTUN := func(src, dst string, port uint16) bool {
		t.Helper()
		s, d := netip.AddrPortFrom(netip.MustParseAddr(src), 5555), netip.AddrPortFrom(netip.MustParseAddr(dst), port)
		proto := uint16(unix.ETH_P_IP)
		if s.Addr().Is6() {
			proto = unix.ETH_P_IPV6
		}
		capture.inject(t, near.Attrs().HardwareAddr, proto, appendUDP(nil, s, d, []byte("into the tunnel?")))
		return sawUDP(pkts, d, 300*time.Millisecond)
	}
	cases := []struct{ src, dst string }{{"198.18.50.2", "198.18.60.2"}, {"2001:db8:50::2", "2001:db8:60::2"}}
	port := uint16(7000)
	for _, c := range cases {
		port++
		fromTUN(c.src, c.dst, port)
		if !capture.wait(port, time.Second) {
			t.Fatalf("without the kill switch, %s -> %s:%d from the TUN was not forwarded (the test's set-up is wrong)", c.src, c.dst, port)
		}
		port++
		if !intoTUN(c.dst, c.src, port) {
			t.Fatalf("without the kill switch, %s -> %s:%d was not forwarded into the TUN (the test's set-up is wrong)", c.dst, c.src, port)
		}
	}

	ks, err := NewKillSwitch(KillSwitchConfig{Tun: "mqtest0", FwMark: 0x4d51})
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	for _, c := range cases {
		port++
		fromTUN(c.src, c.dst, port)
		if capture.wait(port, 300*time.Millisecond) {
			t.Errorf("with the kill switch, %s -> %s:%d from the TUN was forwarded", c.src, c.dst, port)
		}
		port++
		if intoTUN(c.dst, c.src, port) {
			t.Errorf("with the kill switch, %s -> %s:%d was forwarded into the TUN", c.dst, c.src, port)
		}
	}
}

// sawUDP reports whether the device reads a UDP packet to dst within d.
func sawUDP(r *packetReader, dst netip.AddrPort, d time.Duration) bool {
	timeout := time.After(d)
	for {
		select {
		case p, ok := <-r.c:
			if !ok {
				return false
			}
			if _, to, _, err := parseUDP(p.pkt); err == nil && to == dst {
				return true
			}
		case <-timeout:
			return false
		}
	}
}

// packetCapture reads the frames a link receives (AF_PACKET) and records
// the UDP destination ports of those that carry UDP.
type packetCapture struct {
	fd    int
	index int
	mu    sync.Mutex
	ports map[uint16]bool
}

func capturePackets(t *testing.T, index int) *packetCapture {
	t.Helper()
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: index}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	c := &packetCapture{fd: fd, index: index, ports: map[uint16]bool{}}
	done := make(chan struct{})
	stop := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 2048)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, from, err := unix.Recvfrom(fd, b, 0)
			if err != nil {
				continue
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			if _, dst, _, err := parseUDP(b[:n]); err == nil {
				c.mu.Lock()
				c.ports[dst.Port()] = true
				c.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done; unix.Close(fd) })
	return c
}

// wait reports whether a UDP datagram to port arrives within d.
func (c *packetCapture) wait(port uint16, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		c.mu.Lock()
		got := c.ports[port]
		c.mu.Unlock()
		if got || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// inject sends the IP packet pkt out of the captured link, to the
// hardware address dst.
func (c *packetCapture) inject(t *testing.T, dst net.HardwareAddr, proto uint16, pkt []byte) {
	t.Helper()
	sa := &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: c.index, Halen: uint8(len(dst))}
	copy(sa.Addr[:], dst)
	if err := unix.Sendto(c.fd, pkt, 0, sa); err != nil {
		t.Fatal(err)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
