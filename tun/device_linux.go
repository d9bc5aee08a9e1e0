package tun

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// Create creates the TUN device that cfg describes, sets its MTU, with
// [Config.EndHost] its end-host sysctls, adds its addresses (IPv6 ones
// with IFA_F_NODAD, so that they are usable at once instead of after
// duplicate address detection; host addresses, /32 and /128, with
// IFA_F_NOPREFIXROUTE, so that the kernel adds no route to the main table
// for them, not even the /128 it adds for an IPv6 one) and sets the link
// up. On error it closes the device again, which removes the link. It
// works in the calling thread's network namespace.
func Create(cfg Config) (*Device, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("create tun: %w", err)
	}
	wd, err := wgtun.CreateTUN(cfg.Name, cfg.mtu())
	if err != nil {
		return nil, fmt.Errorf("create tun %s: %w", cfg.Name, err)
	}
	name, err := wd.Name()
	if err != nil {
		wd.Close()
		return nil, fmt.Errorf("create tun %s: %w", cfg.Name, err)
	}
	d := newDevice(wd, name)
	if err := d.setUp(&cfg); err != nil {
		d.Close()
		return nil, fmt.Errorf("create tun %s: %w", name, err)
	}
	return d, nil
}

func (d *Device) setUp(cfg *Config) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open control socket: %w", err)
	}
	d.ctlFD = fd

	flags, err := tunFlags(d.File())
	if err != nil {
		return fmt.Errorf("read tun flags: %w", err)
	}
	d.offloads = flags&unix.IFF_VNET_HDR != 0 && d.BatchSize() > 1

	link, err := netlink.LinkByName(d.name)
	if err != nil {
		return fmt.Errorf("look up link: %w", err)
	}
	d.endHost = cfg.EndHost
	if cfg.EndHost {
		// Before the link goes up: addr_gen_mode decides then whether
		// it gets a link-local address.
		if err := d.setEndHost(slices.ContainsFunc(cfg.Addrs, func(p netip.Prefix) bool { return p.Addr().Is6() }), cfg.AllowForward); err != nil {
			return err
		}
	}
	for _, p := range cfg.Addrs {
		if err := addAddr(link, p); err != nil {
			return err
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set link up: %w", err)
	}
	if cfg.EndHost {
		// addr_gen_mode=1 keeps the kernel from adding one; this makes
		// sure (a kernel without it, a race with another program).
		if err := flushLinkLocal(d.name); err != nil {
			return err
		}
	}
	return waitLocal(link, cfg.Addrs)
}

// addrWait bounds how long Create waits for the kernel to accept packets
// for the device's IPv6 addresses.
const addrWait = 2 * time.Second

// waitLocal waits until the kernel has installed the local routes of the
// IPv6 addresses in addrs. Even with IFA_F_NODAD the kernel installs them
// from a workqueue after the link comes up (addrconf_dad_work); until
// then it drops packets to the address (Ip6InAddrErrors). IPv4 local
// routes are installed synchronously.
func waitLocal(link netlink.Link, addrs []netip.Prefix) error {
	deadline := time.Now().Add(addrWait)
	for sleep := 100 * time.Microsecond; ; sleep = min(2*sleep, 10*time.Millisecond) {
		routes, err := netlink.RouteListFiltered(unix.AF_INET6,
			&netlink.Route{Table: unix.RT_TABLE_LOCAL, LinkIndex: link.Attrs().Index},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
		if err != nil {
			return fmt.Errorf("list local routes: %w", err)
		}
		missing := netip.Addr{}
		for _, p := range addrs {
			if p.Addr().Is6() && !slices.ContainsFunc(routes, func(rt netlink.Route) bool {
				return rt.Type == unix.RTN_LOCAL && rt.Dst != nil && ipNetAddr(rt.Dst) == p.Addr()
			}) {
				missing = p.Addr()
				break
			}
		}
		if !missing.IsValid() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for address %v: no local route after %v", missing, addrWait)
		}
		time.Sleep(sleep)
	}
}

func ipNetAddr(n *net.IPNet) netip.Addr {
	a, _ := netip.AddrFromSlice(n.IP)
	return a.Unmap()
}

// MTU returns the link's current MTU. Unlike wireguard-go's MTU it asks
// the network namespace that the device was created in, from whatever
// thread it is called.
func (d *Device) MTU() (int, error) {
	if d.ctlFD < 0 {
		return d.Device.MTU()
	}
	ifr, err := unix.NewIfreq(d.name)
	if err != nil {
		return 0, fmt.Errorf("get mtu of %s: %w", d.name, err)
	}
	if err := unix.IoctlIfreq(d.ctlFD, unix.SIOCGIFMTU, ifr); err != nil {
		return 0, fmt.Errorf("get mtu of %s: %w", d.name, err)
	}
	return int(ifr.Uint32()), nil
}

// SetMTU sets the link's MTU, MinMTU..MaxMTU. The client raises it as the
// tunnel's datagram budget grows with path MTU discovery. With
// [Config.EndHost], an MTU that rises to MinIPv6MTU or more from below
// brings back the link's IPv6 configuration with the kernel's defaults;
// SetMTU then sets its end-host sysctls again, from the calling thread's
// network namespace (every thread's, in a process that lives in one), and
// deletes the link-local address the kernel gave it.
func (d *Device) SetMTU(mtu int) error {
	if mtu < MinMTU || mtu > MaxMTU {
		return fmt.Errorf("set mtu of %s: %d out of range %d..%d", d.name, mtu, MinMTU, MaxMTU)
	}
	if d.ctlFD < 0 {
		return fmt.Errorf("set mtu of %s: no control socket", d.name)
	}
	ifr, err := unix.NewIfreq(d.name)
	if err != nil {
		return fmt.Errorf("set mtu of %s: %w", d.name, err)
	}
	ifr.SetUint32(uint32(mtu))
	if err := unix.IoctlIfreq(d.ctlFD, unix.SIOCSIFMTU, ifr); err != nil {
		return fmt.Errorf("set mtu of %s: %w", d.name, err)
	}
	if err := d.afterMTU(mtu); err != nil {
		return fmt.Errorf("set mtu of %s: %w", d.name, err)
	}
	return nil
}

func (d *Device) closeCtl() {
	if d.ctlFD >= 0 {
		unix.Close(d.ctlFD)
		d.ctlFD = -1
	}
}

// tunFlags returns the IFF_* flags of the TUN file descriptor f
// (TUNGETIFF).
func tunFlags(f *os.File) (uint16, error) {
	sc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var flags uint16
	var ierr error
	err = sc.Control(func(fd uintptr) {
		var ifr *unix.Ifreq
		ifr, ierr = unix.NewIfreq("")
		if ierr != nil {
			return
		}
		ierr = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr)
		flags = ifr.Uint16()
	})
	return flags, errors.Join(err, ierr)
}

// deleteTUNLink deletes the TUN link called name, if there is one. A link
// of that name that is not a TUN/TAP device is left alone and reported.
func deleteTUNLink(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok {
			return nil
		}
		return fmt.Errorf("look up link %s: %w", name, err)
	}
	if t := link.Type(); t != "tuntap" {
		return fmt.Errorf("delete link %s: is a %s link, not tun", name, t)
	}
	if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// lookupLink says whether a link called name exists and, if it does,
// whether it is a TUN that some process still has open. A non-persistent
// TUN, like ours, vanishes with its last file descriptor, so one that
// exists is held open. A persistent one counts as held when it reports
// attached queues (multi-queue TUNs only) or has a carrier, which a TUN
// has only while a queue is attached; a persistent TUN that a process
// holds but keeps down cannot be told from a detached one.
func lookupLink(name string) (linkInfo, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok {
			return linkInfo{}, nil
		}
		return linkInfo{}, fmt.Errorf("look up link %s: %w", name, err)
	}
	li := linkInfo{exists: true, kind: link.Type()}
	if tt, ok := link.(*netlink.Tuntap); ok && tt.Mode == netlink.TUNTAP_MODE_TUN {
		li.tun = true
		li.attached = tt.NonPersist || tt.Queues+tt.DisabledQueues > 0 || tt.RawFlags&unix.IFF_LOWER_UP != 0
	}
	return li, nil
}

// prefixIPNet converts p for netlink, keeping the address bits beyond the
// prefix length (an interface address) as they are.
func prefixIPNet(p netip.Prefix) *net.IPNet {
	a := p.Addr()
	return &net.IPNet{
		IP:   net.IP(a.AsSlice()),
		Mask: net.CIDRMask(p.Bits(), a.BitLen()),
	}
}

// SetAddrs replaces the device's addresses with addrs, added as Create
// adds them: the new ones first, so the link is never without one, then
// the old ones go. A device created without IPv6 (EndHost disabled IPv6
// on it) takes no IPv6 address.
func (d *Device) SetAddrs(addrs []netip.Prefix) error {
	d.sysMu.Lock()
	noIPv6 := d.endHost && !d.hasIPv6
	d.sysMu.Unlock()
	if noIPv6 && slices.ContainsFunc(addrs, func(p netip.Prefix) bool { return p.Addr().Is6() }) {
		return fmt.Errorf("set addresses of %s: the TUN was set up without IPv6", d.name)
	}
	link, err := netlink.LinkByName(d.name)
	if err != nil {
		return fmt.Errorf("set addresses of %s: %w", d.name, err)
	}
	have, err := netlink.AddrList(link, unix.AF_UNSPEC)
	if err != nil {
		return fmt.Errorf("set addresses of %s: %w", d.name, err)
	}
	has := func(p netip.Prefix) bool {
		return slices.ContainsFunc(have, func(a netlink.Addr) bool { return ipNetAddr(a.IPNet) == p.Addr() })
	}
	for _, p := range addrs {
		if has(p) {
			continue
		}
		if err := addAddr(link, p); err != nil {
			return err
		}
	}
	for _, a := range have {
		if !slices.ContainsFunc(addrs, func(p netip.Prefix) bool { return p.Addr() == ipNetAddr(a.IPNet) }) {
			if err := netlink.AddrDel(link, &a); err != nil {
				return fmt.Errorf("delete address %v: %w", a.IPNet, err)
			}
		}
	}
	return waitLocal(link, addrs)
}

// addAddr adds p to link as a TUN address: no duplicate address detection
// for IPv6 (nothing else is on the link), and no prefix route for a host
// address, so that an assignment puts no route in the main table.
func addAddr(link netlink.Link, p netip.Prefix) error {
	a := &netlink.Addr{IPNet: prefixIPNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if p.IsSingleIP() {
		a.Flags |= unix.IFA_F_NOPREFIXROUTE
	}
	if err := netlink.AddrAdd(link, a); err != nil {
		return fmt.Errorf("add address %v: %w", p, err)
	}
	return nil
}
