package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/masque-vpn/masque/policy"
	"github.com/quic-go/quic-go"
)

// Errors of serverNames.check; requestStatus maps them to HTTP statuses.
var (
	// errBadAuthority is an :authority that is no host and port.
	errBadAuthority = errors.New("malformed :authority")
	// errMisdirected is an :authority that names a host or port that is
	// not this server's (RFC 9110 §15.5.20, 421 Misdirected Request).
	errMisdirected = errors.New(":authority names another server")
)

// serverNames are the origins a request's :authority may name: the names
// and addresses of [ServerConfig.Names], the local address of the
// connection the request came on, and the listen port. It is immutable.
//
// The local address is what makes a client that dialed an IP address work
// whatever name it put in its SNI (the interop rule): its :authority is the
// address it dialed, and that is the address its packets arrive at.
type serverNames struct {
	port      int                     // 0 accepts any
	names     map[string]struct{}     // lower case, no trailing dot
	wildcards map[string]struct{}     // "*.example.com" as "example.com"
	addrs     map[netip.Addr]struct{} // unmapped, no zone
}

// newServerNames parses names (DNS names, "*." and a DNS name, or IP
// addresses), reporting every bad one with its index.
func newServerNames(names []string, port int) (*serverNames, error) {
	n := &serverNames{
		port:      port,
		names:     make(map[string]struct{}),
		wildcards: make(map[string]struct{}),
		addrs:     make(map[netip.Addr]struct{}),
	}
	var errs []error
	for i, s := range names {
		if !ValidServerName(s) {
			errs = append(errs, fmt.Errorf("names[%d]: %q is not a DNS name, *.NAME or an IP address without a zone", i, s))
			continue
		}
		if a, err := netip.ParseAddr(s); err == nil {
			n.addrs[a.Unmap()] = struct{}{}
			continue
		}
		name := strings.ToLower(strings.TrimSuffix(s, "."))
		if rest, ok := strings.CutPrefix(name, "*."); ok {
			n.wildcards[rest] = struct{}{}
			continue
		}
		n.names[name] = struct{}{}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return n, nil
}

// ValidServerName reports whether s can be one of [ServerConfig.Names]: a
// DNS name (a trailing dot allowed), "*." and a DNS name, or an IP address
// without a zone.
func ValidServerName(s string) bool {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Zone() == ""
	}
	name := strings.TrimSuffix(s, ".")
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		return policy.ValidHostName(rest)
	}
	return policy.ValidHostName(name)
}

// check reports whether authority names this server for a request that
// came on a connection to local (invalid if unknown): nil, errBadAuthority
// or errMisdirected. Names compare without regard to case and a trailing
// dot, addresses in canonical form (IPv4-mapped IPv6 as IPv4, zones
// ignored); a missing port is 443.
func (n *serverNames) check(authority string, local netip.Addr) error {
	name, addr, port, ok := parseAuthority(authority)
	if !ok {
		return errBadAuthority
	}
	if n.port != 0 && int(port) != n.port {
		return errMisdirected
	}
	if addr.IsValid() {
		if _, ok := n.addrs[addr]; ok {
			return nil
		}
		if local = local.Unmap().WithZone(""); local.IsValid() && !local.IsUnspecified() && addr == local {
			return nil
		}
		return errMisdirected
	}
	if _, ok := n.names[name]; ok {
		return nil
	}
	if _, rest, found := strings.Cut(name, "."); found {
		if _, ok := n.wildcards[rest]; ok {
			return nil
		}
	}
	return errMisdirected
}

// parseAuthority splits an :authority (RFC 3986 §3.2.2-3.2.3, no userinfo)
// into a DNS name (lower case, no trailing dot) or an IP address
// (unmapped, zone stripped) and a port (443 when absent or empty). IPv6
// addresses must be in brackets, IPv4 ones must not.
func parseAuthority(a string) (name string, addr netip.Addr, port uint16, ok bool) {
	var host, portStr string
	if rest, found := strings.CutPrefix(a, "["); found {
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return "", netip.Addr{}, 0, false
		}
		host, portStr = rest[:end], rest[end+1:]
		if portStr != "" {
			if portStr[0] != ':' {
				return "", netip.Addr{}, 0, false
			}
			portStr = portStr[1:]
		}
		// RFC 6874 writes the zone as "%25" and the zone; it never names
		// the server, whatever it is.
		if i := strings.IndexByte(host, '%'); i >= 0 {
			host = host[:i]
		}
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.Is6() {
			return "", netip.Addr{}, 0, false
		}
		addr = ip.Unmap()
	} else {
		host, portStr = a, ""
		if i := strings.LastIndexByte(a, ':'); i >= 0 {
			host, portStr = a[:i], a[i+1:]
		}
		if strings.IndexByte(host, ':') >= 0 {
			return "", netip.Addr{}, 0, false // IPv6 without brackets
		}
		if ip, err := netip.ParseAddr(host); err == nil {
			addr = ip
		} else {
			name = strings.ToLower(strings.TrimSuffix(host, "."))
			if !policy.ValidHostName(name) {
				return "", netip.Addr{}, 0, false
			}
		}
	}
	port = 443
	if portStr != "" {
		for i := 0; i < len(portStr); i++ {
			if portStr[i] < '0' || portStr[i] > '9' {
				return "", netip.Addr{}, 0, false
			}
		}
		p, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil || p == 0 {
			return "", netip.Addr{}, 0, false
		}
		port = uint16(p)
	}
	return name, addr, port, true
}

// localAddrOf is the address c's packets arrive at (quic-go learns it from
// the packet information of a wildcard socket), or invalid.
func localAddrOf(c *quic.Conn) netip.Addr {
	if c == nil {
		return netip.Addr{}
	}
	if ua, ok := c.LocalAddr().(*net.UDPAddr); ok {
		return ua.AddrPort().Addr().Unmap().WithZone("")
	}
	return netip.Addr{}
}
