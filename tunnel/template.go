package tunnel

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/yosida95/uritemplate/v3"
)

// IPPathPrefix is the path of RFC 9484's default URI template
// "https://HOST:PORT/.well-known/masque/ip/{target}/{ipproto}/" before its
// variables.
const IPPathPrefix = "/.well-known/masque/ip/"

// maxTargetLen bounds the target variable: the longest IPv6 prefix in text
// with its percent-encoded slash is well below it.
const maxTargetLen = 64

// ipScope is what a CONNECT-IP request asks to reach (RFC 9484 §3): a
// target ("*" for everything, an address or a prefix) and an IP protocol
// (0 for every protocol, from "*").
type ipScope struct {
	target netip.Prefix // invalid (zero) means every address
	proto  uint8        // 0 means every protocol
}

// full reports whether the scope is a full tunnel.
func (s ipScope) full() bool { return !s.target.IsValid() && s.proto == 0 }

// allows reports whether dst and proto are inside the scope.
func (s ipScope) allows(dst netip.Addr, proto uint8) bool {
	if s.target.IsValid() && !s.target.Contains(dst) {
		return false
	}
	return s.proto == 0 || s.proto == proto
}

// parseIPPath parses the escaped path of a CONNECT-IP request made with the
// default template: IPPathPrefix + target + "/" + ipproto + "/".
func parseIPPath(escapedPath string) (ipScope, error) {
	var s ipScope
	rest, ok := strings.CutPrefix(escapedPath, IPPathPrefix)
	if !ok {
		return s, fmt.Errorf("path does not start with %s", IPPathPrefix)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || parts[2] != "" {
		return s, errors.New("path is not .../{target}/{ipproto}/")
	}
	target, err := url.PathUnescape(parts[0])
	if err != nil || target == "" || len(target) > maxTargetLen {
		return s, errors.New("malformed target")
	}
	proto, err := url.PathUnescape(parts[1])
	if err != nil || proto == "" {
		return s, errors.New("malformed ipproto")
	}
	if target != "*" {
		// RFC 9484 §3: an IP address, or a prefix as address "/" length.
		if p, err := netip.ParsePrefix(target); err == nil {
			if p != p.Masked() || p.Addr().Zone() != "" {
				return s, fmt.Errorf("target %q has host bits set", target)
			}
			s.target = p
		} else if a, err := netip.ParseAddr(target); err == nil && a.Zone() == "" {
			s.target = netip.PrefixFrom(a, a.BitLen())
		} else {
			return s, fmt.Errorf("target %q is not *, an IP address or a prefix", target)
		}
	}
	if proto != "*" {
		n, err := strconv.ParseUint(proto, 10, 8)
		if err != nil {
			return s, fmt.Errorf("ipproto %q is not * or 0-255", proto)
		}
		s.proto = uint8(n)
	}
	return s, nil
}

// ipPath returns the escaped request path for scope s, the inverse of
// parseIPPath. A full tunnel is "/.well-known/masque/ip/*/*/".
func ipPath(s ipScope) string {
	target, proto := "*", "*"
	if s.target.IsValid() {
		target = url.PathEscape(s.target.String())
	}
	if s.proto != 0 {
		proto = strconv.Itoa(int(s.proto))
	}
	return IPPathPrefix + target + "/" + proto + "/"
}

// requestURL is the CONNECT-IP request's URL: cfg.Template expanded for
// the whole Internet (RFC 9484 §2: target and ipproto "*"), or the
// well-known path on cfg.Authority.
func requestURL(cfg ClientConfig) (*url.URL, error) {
	raw := "https://" + cfg.Authority + ipPath(ipScope{})
	if cfg.Template != "" {
		t, err := uritemplate.New(cfg.Template)
		if err != nil {
			return nil, fmt.Errorf("connect-ip: template %q: %v", cfg.Template, err)
		}
		raw, err = t.Expand(uritemplate.Values{"target": uritemplate.String("*"), "ipproto": uritemplate.String("*")})
		if err != nil {
			return nil, fmt.Errorf("connect-ip: template %q: %v", cfg.Template, err)
		}
		// "*" is a sub-delimiter, valid as is in a path and a query
		// (RFC 3986 §3.3, §3.4), and the spelling RFC 9484 shows.
		raw = strings.ReplaceAll(raw, "%2A", "*")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("connect-ip: request URI %q: %w", raw, err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("connect-ip: template %q: want an https URI with a host", cfg.Template)
	}
	return u, nil
}
