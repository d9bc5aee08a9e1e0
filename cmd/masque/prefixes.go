package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// parseCIDR parses a prefix (or a bare address as a host prefix) and
// insists on a masked one.
func parseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		a, err2 := netip.ParseAddr(s)
		if err2 != nil {
			return netip.Prefix{}, errors.New("not a CIDR prefix")
		}
		if a.Zone() != "" {
			return netip.Prefix{}, errors.New("zones are not allowed in a route")
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("host bits set (did you mean %s?)", p.Masked())
	}
	return p, nil
}

// lanPrefixes returns the networks of the host's interfaces other than
// loopback and the TUN: what --allow-lan lets the kill switch reach.
func lanPrefixes(tunName string) []netip.Prefix {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []netip.Prefix
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagLoopback != 0 || ifc.Name == tunName {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if p, err := netip.ParsePrefix(n.String()); err == nil && !p.Addr().IsLinkLocalUnicast() {
					out = append(out, p.Masked())
				}
			}
		}
	}
	return out
}

// familiesWith keeps the routes of the address families the tunnel has an
// address for.
func familiesWith(routes, addrs []netip.Prefix) []netip.Prefix {
	var has4, has6 bool
	for _, a := range addrs {
		if a.Addr().Is4() {
			has4 = true
		} else {
			has6 = true
		}
	}
	var out []netip.Prefix
	for _, r := range routes {
		if (r.Addr().Is4() && has4) || (r.Addr().Is6() && has6) {
			out = append(out, r)
		}
	}
	return out
}

// maxLoggedPrefixes bounds the prefixes a log line lists: up to
// tunnel.MaxRoutes routes would make a line of tens of KiB.
const maxLoggedPrefixes = 16

// logPrefixes returns ps for a log line: all of them up to
// maxLoggedPrefixes, else the first ones and how many more there are.
func logPrefixes(ps []netip.Prefix) string {
	if len(ps) <= maxLoggedPrefixes {
		return joinPrefixes(ps)
	}
	return fmt.Sprintf("%s and %d more", joinPrefixes(ps[:maxLoggedPrefixes]), len(ps)-maxLoggedPrefixes)
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
