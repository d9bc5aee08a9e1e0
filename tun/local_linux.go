package tun

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
)

// LocalPrefixes returns the host's own addresses with their connected
// networks, read from the kernel (RTM_GETADDR), from every link but
// loopback and skip (the tunnel's TUN, should it exist already): what a
// VPN client must never let a server take over, by assigning addresses
// in it or routing it into the tunnel. Link-local addresses are left out:
// every link has them and they are never routed anyway. A point-to-point
// address counts with its peer.
func LocalPrefixes(skip string) ([]netip.Prefix, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []netip.Prefix
	add := func(p netip.Prefix) {
		if p.IsValid() && !p.Addr().IsLinkLocalUnicast() && !p.Addr().IsLoopback() && !slices.Contains(out, p.Masked()) {
			out = append(out, p.Masked())
		}
	}
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 || (skip != "" && a.Name == skip) {
			continue
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("list addresses of %s: %w", a.Name, err)
		}
		for _, ad := range addrs {
			if ad.IPNet == nil {
				continue
			}
			ones, _ := ad.Mask.Size()
			add(netip.PrefixFrom(ipNetAddr(ad.IPNet), ones))
			if ad.Peer != nil {
				ones, _ := ad.Peer.Mask.Size()
				add(netip.PrefixFrom(ipNetAddr(ad.Peer), ones))
			}
		}
	}
	return out, nil
}
