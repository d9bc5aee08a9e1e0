package tun

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/masque-vpn/masque/tun/internal/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestCreate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantMTU int
	}{
		{
			name: "dual stack",
			cfg: Config{Name: "mqtest0", MTU: 1400, Addrs: []netip.Prefix{
				netip.MustParsePrefix("198.18.0.2/32"), netip.MustParsePrefix("2001:db8::2/128"),
			}},
			wantMTU: 1400,
		},
		{
			name:    "server gateway default mtu",
			cfg:     Config{Name: "mqtest1", Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.0.1/16")}},
			wantMTU: DefaultMTU,
		},
		{
			name:    "kernel picks name",
			cfg:     Config{MTU: 9000},
			wantMTU: 9000,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nstest.New(t)
			d, err := Create(tt.cfg)
			if err != nil {
				t.Fatalf("Create(%+v) = %v", tt.cfg, err)
			}
			defer d.Close()

			if tt.cfg.Name != "" && d.Name() != tt.cfg.Name {
				t.Errorf("Name() = %q, want %q", d.Name(), tt.cfg.Name)
			}
			link, err := netlink.LinkByName(d.Name())
			if err != nil {
				t.Fatalf("LinkByName(%q) = %v", d.Name(), err)
			}
			if got := link.Type(); got != "tuntap" {
				t.Errorf("link type = %q, want tuntap", got)
			}
			if got := link.Attrs().MTU; got != tt.wantMTU {
				t.Errorf("link MTU = %d, want %d", got, tt.wantMTU)
			}
			if mtu, err := d.MTU(); err != nil || mtu != tt.wantMTU {
				t.Errorf("MTU() = %d, %v, want %d, nil", mtu, err, tt.wantMTU)
			}
			if link.Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("link flags = %v, want up", link.Attrs().Flags)
			}
			if !d.Offloads() {
				t.Errorf("Offloads() = false, want true (virtio-net-hdr on Linux >= 2.6.27)")
			}
			if d.BatchSize() <= 1 {
				t.Errorf("BatchSize() = %d, want > 1 with offloads", d.BatchSize())
			}

			addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
			if err != nil {
				t.Fatalf("AddrList = %v", err)
			}
			var got []netip.Prefix
			for _, a := range addrs {
				p := ipNetPrefix(a.IPNet)
				if p.Addr().IsLinkLocalUnicast() {
					continue
				}
				got = append(got, p)
				if noPrefix := a.Flags&unix.IFA_F_NOPREFIXROUTE != 0; noPrefix != p.IsSingleIP() {
					t.Errorf("address %v flags = %#x: noprefixroute %v, want it exactly for host addresses", p, a.Flags, noPrefix)
				}
				if p.Addr().Is6() {
					if a.Flags&unix.IFA_F_NODAD == 0 || a.Flags&unix.IFA_F_TENTATIVE != 0 {
						t.Errorf("address %v flags = %#x, want nodad and not tentative", p, a.Flags)
					}
				}
			}
			want := slices.Clone(tt.cfg.Addrs)
			sortPrefixes(got)
			sortPrefixes(want)
			if diff := cmp.Diff(want, got, cmpPrefix); diff != "" {
				t.Errorf("addresses (-want +got):\n%s", diff)
			}
			// Host addresses add no route to the main table.
			routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL,
				&netlink.Route{Table: unix.RT_TABLE_MAIN, LinkIndex: link.Attrs().Index}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
			if err != nil {
				t.Fatal(err)
			}
			for _, rt := range routes {
				if rt.Dst != nil && slices.ContainsFunc(tt.cfg.Addrs, func(p netip.Prefix) bool {
					return p.IsSingleIP() && ipNetPrefix(rt.Dst).Contains(p.Addr())
				}) {
					t.Errorf("main table route %v for a host address", rt.Dst)
				}
			}

			name := d.Name()
			if err := d.Close(); err != nil {
				t.Fatalf("Close() = %v", err)
			}
			if err := d.Close(); err != nil {
				t.Errorf("second Close() = %v, want nil", err)
			}
			if _, err := netlink.LinkByName(name); !isLinkNotFound(err) {
				t.Errorf("LinkByName(%q) after Close = %v, want not found", name, err)
			}
			for range d.Events() {
				// Closed once the device is.
			}
			if _, err := d.Write([][]byte{make([]byte, Headroom+40)}, Headroom); !errors.Is(err, ErrClosed) || !errors.Is(err, net.ErrClosed) {
				t.Errorf("Write() after Close = %v, want ErrClosed", err)
			}
		})
	}
}

func TestCreateInvalid(t *testing.T) {
	_, err := Create(Config{MTU: 100})
	if err == nil || !strings.Contains(err.Error(), "create tun: mtu: 100 out of range") {
		t.Errorf("Create(MTU: 100) = %v, want mtu error", err)
	}
}

func TestCreateUndoesOnError(t *testing.T) {
	nstest.New(t)
	// Without IPv6 on new links, adding the IPv6 address fails after the
	// link exists.
	if _, err := SetSysctl("net/ipv6/conf/default/disable_ipv6", "1"); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Name: "mqtest0", Addrs: []netip.Prefix{
		netip.MustParsePrefix("198.18.0.2/32"), netip.MustParsePrefix("2001:db8::2/128"),
	}}
	d, err := Create(cfg)
	if err == nil {
		d.Close()
		t.Fatalf("Create(%+v) with IPv6 disabled = nil, want error", cfg)
	}
	if want := "create tun mqtest0: add address 2001:db8::2/128: "; !strings.Contains(err.Error(), want) {
		t.Errorf("Create() = %q, want it to contain %q", err, want)
	}
	if _, err := netlink.LinkByName("mqtest0"); !isLinkNotFound(err) {
		t.Errorf("LinkByName(mqtest0) after failed Create = %v, want not found", err)
	}
}

// TestReadWrite sends a UDP datagram from a socket through the TUN and
// reads it from the device, then writes the reply into the device and
// receives it on the socket.
func TestReadWrite(t *testing.T) {
	tests := []struct {
		name  string
		local netip.Prefix
		peer  netip.AddrPort
	}{
		{name: "ipv4", local: netip.MustParsePrefix("198.18.0.1/24"), peer: netip.MustParseAddrPort("198.18.0.2:5555")},
		{name: "ipv6", local: netip.MustParsePrefix("2001:db8::1/64"), peer: netip.MustParseAddrPort("[2001:db8::2]:5555")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nstest.New(t)
			d, err := Create(Config{Name: "mqtest0", Addrs: []netip.Prefix{tt.local}})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			pkts := readPackets(t, d)

			sock, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(tt.local.Addr(), 0)))
			if err != nil {
				t.Fatal(err)
			}
			defer sock.Close()
			local := sock.LocalAddr().(*net.UDPAddr).AddrPort()

			out := []byte("masque outbound")
			if _, err := sock.WriteToUDPAddrPort(out, tt.peer); err != nil {
				t.Fatal(err)
			}
			pkt := waitUDP(t, pkts, tt.peer)
			src, dst, payload, err := parseUDP(pkt)
			if err != nil {
				t.Fatalf("parseUDP(%x) = %v", pkt, err)
			}
			if src != local || dst != tt.peer || !bytes.Equal(payload, out) {
				t.Errorf("Read() packet = %v -> %v %q, want %v -> %v %q", src, dst, payload, local, tt.peer, out)
			}

			in := []byte("masque inbound")
			buf := make([]byte, Headroom, Headroom+128)
			buf = appendUDP(buf, tt.peer, local, in)
			if _, err := d.Write([][]byte{buf}, Headroom); err != nil {
				t.Fatalf("Write() = %v", err)
			}
			sock.SetReadDeadline(time.Now().Add(5 * time.Second))
			rb := make([]byte, 1500)
			n, from, err := sock.ReadFromUDPAddrPort(rb)
			if err != nil {
				t.Fatalf("ReadFromUDPAddrPort() = %v", err)
			}
			if from != tt.peer || !bytes.Equal(rb[:n], in) {
				t.Errorf("socket got %q from %v, want %q from %v", rb[:n], from, in, tt.peer)
			}
		})
	}
}

// TestReadSegmented sends one UDP GSO super-packet and expects the
// device to hand it over in segments, all from one Read when the kernel
// passes it to the TUN unsegmented (USO, Linux 6.2+).
func TestReadSegmented(t *testing.T) {
	nstest.New(t)
	d, err := Create(Config{Name: "mqtest0", MTU: 1500, Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.0.1/24")}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	pkts := readPackets(t, d)

	sock, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(198, 18, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	rc, err := sock.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	const segSize, segs = 1000, 4
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, segSize)
	}); err != nil || serr != nil {
		t.Skipf("UDP_SEGMENT: %v %v", err, serr)
	}
	peer := netip.MustParseAddrPort("198.18.0.2:5555")
	payload := bytes.Repeat([]byte("0123456789"), segSize*segs/10)
	if _, err := sock.WriteToUDPAddrPort(payload, peer); err != nil {
		t.Fatal(err)
	}
	var got []byte
	var batch int
	for len(got) < len(payload) {
		pkt := waitUDP(t, pkts, peer)
		_, _, p, err := parseUDP(pkt)
		if err != nil {
			t.Fatalf("parseUDP = %v", err)
		}
		if len(p) != segSize {
			t.Errorf("segment size = %d, want %d", len(p), segSize)
		}
		got = append(got, p...)
		batch = max(batch, pkts.batch(pkt))
	}
	if !bytes.Equal(got, payload) {
		t.Errorf("segments do not add up to the payload")
	}
	if batch != segs {
		t.Errorf("largest Read = %d packets, want %d (one GSO packet split by the device)", batch, segs)
	}
}

// packetReader is fed by a goroutine that Reads from a Device until it
// is closed.
type packetReader struct {
	c       chan readPacket
	batches map[string]int
}

type readPacket struct {
	pkt   []byte
	batch int // number of packets of the Read that returned pkt
}

func (r *packetReader) batch(pkt []byte) int { return r.batches[string(pkt)] }

func readPackets(t *testing.T, d *Device) *packetReader {
	r := &packetReader{c: make(chan readPacket, 1024), batches: make(map[string]int)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(r.c)
		mtu, err := d.MTU()
		if err != nil {
			t.Errorf("MTU() in another goroutine = %v", err)
			return
		}
		bufs := make([][]byte, d.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, Headroom+mtu)
		}
		sizes := make([]int, len(bufs))
		for {
			n, err := d.Read(bufs, sizes, Headroom)
			if err != nil {
				if !errors.Is(err, net.ErrClosed) || !errors.Is(err, os.ErrClosed) {
					t.Errorf("Read() = %v, want net.ErrClosed and os.ErrClosed after Close", err)
				}
				return
			}
			for i := range n {
				select {
				case r.c <- readPacket{slices.Clone(bufs[i][Headroom : Headroom+sizes[i]]), n}:
				default:
				}
			}
		}
	}()
	t.Cleanup(func() {
		d.Close()
		<-done
	})
	return r
}

// waitUDP returns the next packet to dst, skipping others (IPv6 router
// solicitations, MLD reports).
func waitUDP(t *testing.T, r *packetReader, dst netip.AddrPort) []byte {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case p, ok := <-r.c:
			if !ok {
				t.Fatal("device closed")
			}
			if _, d, _, err := parseUDP(p.pkt); err == nil && d == dst {
				r.batches[string(p.pkt)] = p.batch
				return p.pkt
			}
		case <-timeout:
			t.Fatalf("no packet to %v from the device", dst)
		}
	}
}

// parseUDP parses an IPv4 or IPv6 packet that carries UDP, without
// extension headers or options, and checks the UDP checksum.
func parseUDP(pkt []byte) (src, dst netip.AddrPort, payload []byte, err error) {
	var sa, da netip.Addr
	var udp []byte
	switch {
	case len(pkt) >= 20 && pkt[0]>>4 == 4:
		if pkt[0]&0xf != 5 || pkt[9] != unix.IPPROTO_UDP {
			return src, dst, nil, errors.New("not plain IPv4 UDP")
		}
		sa, da = netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20]))
		udp = pkt[20:]
	case len(pkt) >= 40 && pkt[0]>>4 == 6:
		if pkt[6] != unix.IPPROTO_UDP {
			return src, dst, nil, errors.New("not plain IPv6 UDP")
		}
		sa, da = netip.AddrFrom16([16]byte(pkt[8:24])), netip.AddrFrom16([16]byte(pkt[24:40]))
		udp = pkt[40:]
	default:
		return src, dst, nil, errors.New("not IP")
	}
	if len(udp) < 8 || int(binary.BigEndian.Uint16(udp[4:])) != len(udp) {
		return src, dst, nil, errors.New("bad UDP length")
	}
	if c := udpChecksum(sa, da, udp); c != 0 && c != 0xffff {
		return src, dst, nil, errors.New("bad UDP checksum")
	}
	return netip.AddrPortFrom(sa, binary.BigEndian.Uint16(udp)),
		netip.AddrPortFrom(da, binary.BigEndian.Uint16(udp[2:])), udp[8:], nil
}

// appendUDP appends an IP packet carrying a UDP datagram.
func appendUDP(b []byte, src, dst netip.AddrPort, payload []byte) []byte {
	udpLen := 8 + len(payload)
	if src.Addr().Is4() {
		ip := len(b)
		b = append(b, 0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, unix.IPPROTO_UDP, 0, 0)
		binary.BigEndian.PutUint16(b[ip+2:], uint16(20+udpLen))
		b = append(b, src.Addr().AsSlice()...)
		b = append(b, dst.Addr().AsSlice()...)
		binary.BigEndian.PutUint16(b[ip+10:], ^uint16(checksum(0, b[ip:ip+20])))
	} else {
		b = append(b, 0x60, 0, 0, 0, byte(udpLen>>8), byte(udpLen), unix.IPPROTO_UDP, 64)
		b = append(b, src.Addr().AsSlice()...)
		b = append(b, dst.Addr().AsSlice()...)
	}
	udp := len(b)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	b = binary.BigEndian.AppendUint16(b, dst.Port())
	b = binary.BigEndian.AppendUint16(b, uint16(udpLen))
	b = append(b, 0, 0)
	b = append(b, payload...)
	c := ^udpChecksum(src.Addr(), dst.Addr(), b[udp:])
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(b[udp+6:], c)
	return b
}

// udpChecksum returns the ones' complement sum of the pseudo-header and
// udp (0xffff when a filled-in checksum is correct).
func udpChecksum(src, dst netip.Addr, udp []byte) uint16 {
	var s uint32
	s = checksum(s, src.AsSlice())
	s = checksum(s, dst.AsSlice())
	s += unix.IPPROTO_UDP + uint32(len(udp))
	return uint16(fold(checksum(s, udp)))
}

func checksum(s uint32, b []byte) uint32 {
	for len(b) >= 2 {
		s += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	return fold(s)
}

func fold(s uint32) uint32 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return s
}

func ipNetPrefix(n *net.IPNet) netip.Prefix {
	a, _ := netip.AddrFromSlice(n.IP)
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits)
}

func sortPrefixes(ps []netip.Prefix) {
	slices.SortFunc(ps, func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
}

var cmpPrefix = cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })

func isLinkNotFound(err error) bool {
	_, ok := errors.AsType[netlink.LinkNotFoundError](err)
	return ok
}

func TestSetMTU(t *testing.T) {
	nstest.New(t)
	d, err := Create(Config{Name: "mqtest2", MTU: 1280})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.SetMTU(1420); err != nil {
		t.Fatalf("SetMTU(1420) = %v", err)
	}
	link, err := netlink.LinkByName("mqtest2")
	if err != nil {
		t.Fatal(err)
	}
	if got := link.Attrs().MTU; got != 1420 {
		t.Errorf("link MTU after SetMTU(1420) = %d", got)
	}
	if got, err := d.MTU(); err != nil || got != 1420 {
		t.Errorf("MTU() = %d, %v; want 1420", got, err)
	}
	for _, bad := range []int{0, MinMTU - 1, MaxMTU + 1} {
		if err := d.SetMTU(bad); err == nil {
			t.Errorf("SetMTU(%d) = nil, want an error", bad)
		}
	}
}

// TestSetAddrs: the TUN moves to new host addresses, keeps none of the
// old, adds no prefix route, and refuses IPv6 on a TUN set up without it.
func TestSetAddrs(t *testing.T) {
	nstest.New(t)
	d, err := Create(Config{Name: "mqtest3", EndHost: true, Addrs: []netip.Prefix{
		netip.MustParsePrefix("100.64.0.2/32"), netip.MustParsePrefix("fd6d:6173:7175:6500::2/128"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	want := []netip.Prefix{netip.MustParsePrefix("100.65.0.9/32"), netip.MustParsePrefix("fd6d:6173:7175:6501::9/128")}
	if err := d.SetAddrs(want); err != nil {
		t.Fatalf("SetAddrs = %v", err)
	}
	link, err := netlink.LinkByName("mqtest3")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := netlink.AddrList(link, unix.AF_UNSPEC)
	if err != nil {
		t.Fatal(err)
	}
	var got []netip.Prefix
	for _, a := range addrs {
		p, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		got = append(got, netip.PrefixFrom(p.Unmap(), ones))
	}
	slices.SortFunc(got, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	if !slices.Equal(got, want) {
		t.Errorf("addresses after SetAddrs = %v, want %v", got, want)
	}
	routes, err := netlink.RouteList(link, unix.AF_UNSPEC)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Table == unix.RT_TABLE_MAIN && r.Dst != nil && !r.Dst.IP.IsLinkLocalUnicast() {
			t.Errorf("main table route through the TUN after SetAddrs: %v", r.Dst)
		}
	}

	v4, err := Create(Config{Name: "mqtest4", EndHost: true, Addrs: []netip.Prefix{netip.MustParsePrefix("100.64.0.3/32")}})
	if err != nil {
		t.Fatal(err)
	}
	defer v4.Close()
	if err := v4.SetAddrs(want); err == nil || !strings.Contains(err.Error(), "set up without IPv6") {
		t.Errorf("SetAddrs(IPv6) on an IPv4-only TUN = %v, want a refusal", err)
	}
}
