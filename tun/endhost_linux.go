package tun

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// sysctlSetting is one sysctl under a link's conf directory and the value
// an end host's link gets.
type sysctlSetting struct{ name, value string }

// endHostIPv4 are the IPv4 sysctls of an end host's link
// (net/ipv4/conf/<link>/...), in the order they are set.
var endHostIPv4 = []sysctlSetting{
	// Redirects: on a host the kernel accepts them if the link's or
	// all's accept_redirects is on (IN_DEV_RX_REDIRECTS: the OR of the
	// two), so the client also drops ICMP redirects from the tunnel
	// itself.
	{"accept_redirects", "0"},
	{"send_redirects", "0"},
	// Nothing that arrives on the link is forwarded: ip_route_input
	// checks the input link's forwarding (IN_DEV_FORWARD). With
	// Config.AllowForward it is 1 (see endHostForwarding).
	{"forwarding", "0"},
	// Strict reverse-path filtering: a source the host would not route
	// back through the link is dropped. The kernel applies the larger of
	// all's and the link's rp_filter, so all.rp_filter=2 makes it loose.
	{"rp_filter", "1"},
}

// endHostIPv6 are the IPv6 sysctls of an end host's link
// (net/ipv6/conf/<link>/...), in the order they are set.
var endHostIPv6 = []sysctlSetting{
	// IN6_ADDR_GEN_MODE_NONE: no link-local (or any automatic) address
	// when the link goes up, so it must be set before; without a
	// link-local address the kernel also sends no router solicitation.
	{"addr_gen_mode", "1"},
	{"accept_ra", "0"},
	{"autoconf", "0"},
	{"accept_redirects", "0"},
	// Host, not router, behaviour on the link. (IPv6 forwards by all's
	// forwarding whatever the link's says; the kill switch's forward
	// chain covers that.)
	{"forwarding", "0"},
}

// endHostForwarding is the IPv4 forwarding of an end host's link with
// [Config.AllowForward]: the replies to hosts behind this one arrive on
// it.
var endHostForwarding = sysctlSetting{"forwarding", "1"}

// endHostIPv4Settings returns endHostIPv4, with endHostForwarding if
// forward.
func endHostIPv4Settings(forward bool) []sysctlSetting {
	if !forward {
		return endHostIPv4
	}
	out := make([]sysctlSetting, len(endHostIPv4))
	for i, s := range endHostIPv4 {
		if s.name == endHostForwarding.name {
			s = endHostForwarding
		}
		out[i] = s
	}
	return out
}

// disableIPv6 turns IPv6 off on an end host's link that has no IPv6
// address: the host then neither sends nor takes IPv6 on it at all.
var disableIPv6 = sysctlSetting{"disable_ipv6", "1"}

// endHostSysctls returns the sysctl keys, as [SetSysctl] takes them, that
// [Create] sets on the link name with [Config.EndHost] (and
// [Config.AllowForward] forward), and the values it sets them to. All are
// per-link keys, under net/ipv4/conf/<name>/ and net/ipv6/conf/<name>/;
// they vanish with the link.
func endHostSysctls(name string, ipv6, forward bool) map[string]string {
	m := map[string]string{}
	for _, s := range endHostIPv4Settings(forward) {
		m["net/ipv4/conf/"+name+"/"+s.name] = s.value
	}
	for _, s := range endHostIPv6 {
		m["net/ipv6/conf/"+name+"/"+s.name] = s.value
	}
	if !ipv6 {
		m["net/ipv6/conf/"+name+"/"+disableIPv6.name] = disableIPv6.value
	}
	return m
}

// setEndHost sets the end-host sysctls of the link: the IPv4 ones always
// (IPv4 forwarding on if forward), the IPv6 ones if the link has an IPv6
// configuration (a link whose MTU is below MinIPv6MTU has none; SetMTU
// sets them once it has). It must run on a thread in the link's network
// namespace (/proc/sys/net is the calling thread's), before the link goes
// up.
func (d *Device) setEndHost(ipv6, forward bool) error {
	d.sysMu.Lock()
	defer d.sysMu.Unlock()
	for _, s := range endHostIPv4Settings(forward) {
		if err := d.setSysctl("net/ipv4/conf/"+d.name+"/"+s.name, s.value); err != nil {
			return err
		}
	}
	d.hasIPv6 = ipv6
	return d.setEndHostIPv6()
}

// setEndHostIPv6 sets the IPv6 end-host sysctls, or notes them pending
// when the link has no IPv6 configuration. d.sysMu is held.
func (d *Device) setEndHostIPv6() error {
	settings := endHostIPv6
	if !d.hasIPv6 {
		settings = append(settings[:len(settings):len(settings)], disableIPv6)
	}
	for i, s := range settings {
		err := d.setSysctl("net/ipv6/conf/"+d.name+"/"+s.name, s.value)
		if i == 0 && errors.Is(err, fs.ErrNotExist) {
			d.v6Pending = true
			return nil
		}
		if err != nil {
			return err
		}
	}
	d.v6Pending = false
	return nil
}

// setSysctl sets key and records the value it held before, the first
// time. d.sysMu is held.
func (d *Device) setSysctl(key, value string) error {
	old, err := SetSysctl(key, value)
	if err != nil {
		return err
	}
	if d.sysctls == nil {
		d.sysctls = map[string]string{}
	}
	if _, ok := d.sysctls[key]; !ok {
		d.sysctls[key] = old
	}
	return nil
}

// Sysctls returns the sysctls the device changed ([Config.EndHost]),
// each key as [SetSysctl] takes it with the value it held before. They
// are the link's own and go with it; a caller that records host changes
// for a crash undo may record them all the same, for the case that the
// link outlives the process.
func (d *Device) Sysctls() map[string]string {
	d.sysMu.Lock()
	defer d.sysMu.Unlock()
	return maps.Clone(d.sysctls)
}

// afterMTU restores the end-host IPv6 settings after an MTU change: a
// link whose MTU drops below MinIPv6MTU loses its IPv6 configuration, and
// when the MTU rises again the kernel creates a fresh one from the
// defaults and, the link being up, gives it a link-local address at
// once. afterMTU then sets the sysctls again (from the calling thread's
// network namespace, like setEndHost) and deletes any link-local
// address.
func (d *Device) afterMTU(mtu int) error {
	if !d.endHost {
		return nil
	}
	d.sysMu.Lock()
	defer d.sysMu.Unlock()
	if mtu < MinIPv6MTU {
		d.v6Pending = true
		return nil
	}
	if !d.v6Pending {
		return nil
	}
	if err := d.setEndHostIPv6(); err != nil {
		return err
	}
	return flushLinkLocal(d.name)
}

// flushLinkLocal deletes the IPv6 link-local addresses of the link name.
func flushLinkLocal(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("look up link: %w", err)
	}
	addrs, err := netlink.AddrList(link, unix.AF_INET6)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ipNetAddr(a.IPNet).IsLinkLocalUnicast() {
			if err := netlink.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("delete link-local address %v: %w", a.IPNet, err)
			}
		}
	}
	return nil
}
