package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/masque-vpn/masque/policy"
	"github.com/vishvananda/netlink"
)

// hostPrefixes returns the addresses on this host's interfaces with their
// prefix lengths: clients must not reach them through the tunnel unless
// allowed, nor the broadcast and anycast addresses the host takes as its
// own for those prefixes.
func hostPrefixes() []netip.Prefix {
	var out []netip.Prefix
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if p, ok := ipNetPrefix(n); ok {
				out = append(out, p)
			}
		}
	}
	return out
}

// ipNetPrefix converts an interface address to an address and prefix
// length (not masked). IPv4 comes as 16-byte IPs with 4- or 16-byte masks.
func ipNetPrefix(n *net.IPNet) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(n.IP)
	ones, bits := n.Mask.Size()
	if !ok || bits == 0 {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap()
	ones -= bits - ip.BitLen()
	if ones < 0 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(ip, ones), true
}

// checkEgress reports an egress interface (name; "" means any) that this
// host does not have: the NAT would match no packet, and clients would
// reach nothing.
func checkEgress(name string) error {
	if name == "" {
		return nil
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return fmt.Errorf("egress: list this host's interfaces: %v", err)
	}
	names := make([]string, 0, len(ifs))
	for _, ifc := range ifs {
		if ifc.Name == name {
			return nil
		}
		names = append(names, ifc.Name)
	}
	const shown = 8
	if len(names) > shown {
		names = append(names[:shown], "…")
	}
	return fmt.Errorf("egress: this host has no interface %s (it has %s)", name, strings.Join(names, ", "))
}

// watchAddrs reports changes of this host's addresses (netlink), at most
// one every 100 ms, until ctx is done or stop is called. stop returns once
// the watch's goroutines (its own and netlink's) have exited. If it cannot
// subscribe it logs why and reports nothing: the policy then knows the
// addresses of the start and of each SIGHUP.
func watchAddrs(ctx context.Context, logger *slog.Logger) (changed <-chan struct{}, stop func()) {
	out := make(chan struct{}, 1)
	updates := make(chan netlink.AddrUpdate, 64)
	done := make(chan struct{}) // closed to end the subscription
	err := netlink.AddrSubscribeWithOptions(updates, done, netlink.AddrSubscribeOptions{
		ErrorCallback: func(err error) {
			select {
			case <-done:
				// Closing the subscription's socket fails the receive
				// it is blocked in: that is the watch stopping (on
				// every SIGTERM), not a problem.
				return
			default:
			}
			logger.Warn("address watch", "err", err)
		},
	})
	if err != nil {
		logger.Warn("cannot watch this host's addresses: restart masqued or send SIGHUP after adding one", "err", err)
		return out, func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer func() {
			close(done)
			// netlink closes updates once its receive loop has returned.
			for range updates {
			}
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-updates:
				if !ok {
					return
				}
			}
			// Coalesce a burst (an interface coming up brings several).
			settle := time.After(100 * time.Millisecond)
		drain:
			for {
				select {
				case <-ctx.Done():
					return
				case _, ok := <-updates:
					if !ok {
						return
					}
				case <-settle:
					break drain
				}
			}
			select {
			case out <- struct{}{}:
			default:
			}
		}
	})
	return out, func() { cancel(); wg.Wait() }
}

// destinations builds the destination policy of s: the defaults, this
// host's interface prefixes and the TUN's (tunAddrs: the server's own
// addresses, their directed broadcasts and subnet-router anycasts), the
// pools unless clients may reach each other, and the operator's allow and
// deny.
func destinations(s *settings, tunAddrs []netip.Prefix) (*policy.Destinations, error) {
	pools := make([]netip.Prefix, 0, 2)
	for _, p := range []netip.Prefix{s.Pool4, s.Pool6} {
		if p.IsValid() {
			pools = append(pools, p)
		}
	}
	return policy.NewDestinations(policy.DestinationsConfig{
		// The TUN may not exist yet: its prefixes are the gateways'.
		ServerPrefixes:      append(hostPrefixes(), tunAddrs...),
		ClientPrefixes:      pools,
		AllowClientToClient: s.AllowClientToClient,
		Allow:               s.Allow,
		Deny:                s.Deny,
	})
}
