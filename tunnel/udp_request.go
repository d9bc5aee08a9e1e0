package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/masque-vpn/masque/policy"
	masque "github.com/quic-go/masque-go"
	"github.com/yosida95/uritemplate/v3"
)

// UDPPathPrefix is the path of RFC 9298's default URI template
// "https://HOST:PORT/.well-known/masque/udp/{target_host}/{target_port}/"
// before its variables.
const UDPPathPrefix = "/.well-known/masque/udp/"

// udpTemplateVars is the variable part of the default template.
const udpTemplateVars = "{target_host}/{target_port}/"

// maxUDPPathLen bounds the escaped request path: the prefix, a 253-character
// name or a percent-encoded IPv6 address, a port and two slashes fit with
// room to spare. Longer paths are refused before template matching, whose
// cost grows with the input.
const maxUDPPathLen = 512

// udpTarget is a validated CONNECT-UDP target (RFC 9298 §3).
type udpTarget struct {
	name string     // DNS name without a trailing dot; "" if addr is set
	addr netip.Addr // IP literal target, unmapped, no zone
	port uint16     // 1-65535
}

// String returns the target as host:port.
func (t udpTarget) String() string {
	host := t.name
	if t.addr.IsValid() {
		host = t.addr.String()
	}
	return net.JoinHostPort(host, strconv.Itoa(int(t.port)))
}

// udpRequestError is a CONNECT-UDP request the server answers with a
// client error: the status and a short reason sent to the client.
type udpRequestError struct {
	status int
	reason string
}

func (e *udpRequestError) Error() string { return e.reason }

func badUDPRequest(format string, args ...any) *udpRequestError {
	return &udpRequestError{status: http.StatusBadRequest, reason: fmt.Sprintf(format, args...)}
}

// udpTemplate returns the default CONNECT-UDP template for the authority
// the client used.
func udpTemplate(authority string) (*uritemplate.Template, error) {
	return uritemplate.New("https://" + authority + UDPPathPrefix + udpTemplateVars)
}

// parseUDPProxyRequest checks the protocol part of a CONNECT-UDP request
// with masque-go: method, :protocol, Capsule-Protocol and the template
// variables. It returns masque-go's request or a *udpRequestError.
func parseUDPProxyRequest(r *http.Request) (*masque.ProxyRequest, error) {
	if len(r.URL.EscapedPath()) > maxUDPPathLen || r.URL.RawQuery != "" {
		return nil, badUDPRequest("request path is not %s%s", UDPPathPrefix, udpTemplateVars)
	}
	if !authorityChars(r.Host) {
		return nil, badUDPRequest("malformed :authority")
	}
	tmpl, err := udpTemplate(r.Host)
	if err != nil {
		return nil, badUDPRequest("malformed :authority")
	}
	req, err := masque.ParseProxyRequest(r, tmpl)
	if err != nil {
		status := http.StatusBadRequest
		if perr, ok := errors.AsType[*masque.ProxyRequestParseError](err); ok {
			status = perr.HTTPStatus
		}
		return nil, &udpRequestError{status: status, reason: err.Error()}
	}
	return req, nil
}

// validateUDPTarget checks what masque-go parsed against our stricter rules:
// target_port is 1-65535, and target_host is an IP address without a zone or
// a DNS host name of at most 253 characters. It returns a *udpRequestError.
// The :authority is serverNames.check's.
func validateUDPTarget(req *masque.ProxyRequest) (udpTarget, error) {
	var t udpTarget
	host, portStr, err := net.SplitHostPort(req.Target)
	if err != nil {
		return t, badUDPRequest("malformed target")
	}
	// masque-go formatted the port with %d: only a sign can precede digits.
	p, err := strconv.Atoi(portStr)
	if err != nil || p < 1 || p > 65535 {
		return t, badUDPRequest("target_port %q is not 1-65535", portStr)
	}
	t.port = uint16(p)
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return t, badUDPRequest("target_host %q has a zone", host)
		}
		t.addr = a.Unmap()
		return t, nil
	}
	name := strings.TrimSuffix(host, ".")
	switch {
	case len(name) > 253:
		return t, badUDPRequest("target_host is longer than 253 characters")
	case !policy.ValidHostName(name):
		return t, badUDPRequest("target_host %q is not an IP address or a DNS name", truncate(host, 64))
	}
	t.name = strings.ToLower(name)
	return t, nil
}

// parseUDPRequest is parseUDPProxyRequest followed by validateUDPTarget;
// serveUDP authenticates between the two.
func parseUDPRequest(r *http.Request) (udpTarget, error) {
	req, err := parseUDPProxyRequest(r)
	if err != nil {
		return udpTarget{}, err
	}
	return validateUDPTarget(req)
}

// authorityChars reports whether s has only characters of a host name, an
// IP literal and a port (RFC 3986 §3.2.2 without sub-delims), so that it
// cannot inject expressions into the template built from it.
func authorityChars(s string) bool {
	if s == "" || len(s) > 300 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-', c == '.', c == '_', c == '~', c == ':', c == '[', c == ']', c == '%':
		default:
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
