package tunnel

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	masque "github.com/quic-go/masque-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/yosida95/uritemplate/v3"
)

// udpRequest builds a server-side CONNECT-UDP request as quic-go's HTTP/3
// server hands it to a handler.
func udpRequest(t testing.TB, authority, path string) *http.Request {
	t.Helper()
	u, err := url.ParseRequestURI(path)
	if err != nil {
		t.Fatalf("ParseRequestURI(%q): %v", path, err)
	}
	return &http.Request{
		Method: http.MethodConnect,
		Proto:  "connect-udp",
		Host:   authority,
		URL:    u,
		Header: http.Header{http3.CapsuleProtocolHeader: {"?1"}},
	}
}

func TestParseUDPRequest(t *testing.T) {
	const auth = "198.18.1.2:4433"
	p := func(s string) string { return UDPPathPrefix + s }
	tests := []struct {
		name      string
		authority string
		path      string
		modify    func(*http.Request)
		want      string // target on success
		status    int    // on failure
		reason    string // substring of the reason
	}{
		{name: "ipv4", path: p("198.18.2.2/7/"), want: "198.18.2.2:7"},
		{name: "ipv6 escaped", path: p("2001%3Adb8%3A%3A2/53/"), want: "[2001:db8::2]:53"},
		{name: "mapped unmapped", path: p("%3A%3Affff%3A198.18.2.2/53/"), want: "198.18.2.2:53"},
		{name: "name", path: p("DNS.Example/53/"), want: "dns.example:53"},
		{name: "name trailing dot", path: p("dns.example./53/"), want: "dns.example:53"},
		{name: "max port", path: p("a.example/65535/"), want: "a.example:65535"},
		{name: "authority without port on 443", authority: "proxy.example", path: p("a.example/1/"), want: "a.example:1"},

		{name: "port 0", path: p("a.example/0/"), status: 400, reason: "target_port"},
		{name: "port too big", path: p("a.example/65536/"), status: 400, reason: "target_port"},
		{name: "negative port", path: p("a.example/-1/"), status: 400, reason: "target_port"},
		{name: "port not a number", path: p("a.example/dns/"), status: 400, reason: "target_port"},
		{name: "port overflows", path: p("a.example/99999999999999999999/"), status: 400, reason: "target_port"},
		{name: "missing port", path: p("a.example//"), status: 400, reason: "target_host and target_port"},
		{name: "missing host", path: p("/53/"), status: 400, reason: "target_host and target_port"},
		{name: "missing trailing segment", path: p("a.example/"), status: 400, reason: "target_host and target_port"},
		{name: "extra segment", path: p("a/b/53/"), status: 400, reason: "target_host and target_port"},
		{name: "query", path: p("a.example/53/?x=1"), status: 400, reason: "request path"},
		{name: "long host", path: p(strings.Repeat("a.", 127) + "ab/53/"), status: 400, reason: "longer than 253"},
		{name: "long path", path: p(strings.Repeat("a", 600) + "/53/"), status: 400, reason: "request path"},
		{name: "bad label", path: p("a..example/53/"), status: 400, reason: "not an IP address or a DNS name"},
		{name: "encoded slash", path: p("a%2Fb/53/"), status: 400, reason: "not an IP address or a DNS name"},
		{name: "nul", path: p("a%00b/53/"), status: 400, reason: "not an IP address or a DNS name"},
		{name: "zone", path: p("fe80%3A%3A1%25eth0/53/"), status: 400, reason: "zone"},
		{name: "all digits", path: p("1234/53/"), status: 400, reason: "not an IP address"},
		{name: "empty authority", authority: "", path: p("a.example/53/"), status: 400},
		{name: "authority breaks template", authority: "a{b}:4433", path: p("a.example/53/"), status: 400, reason: "authority"},
		{name: "not CONNECT", path: p("a.example/53/"), modify: func(r *http.Request) { r.Method = http.MethodGet }, status: 405},
		{name: "wrong protocol", path: p("a.example/53/"), modify: func(r *http.Request) { r.Proto = "connect-ip" }, status: 501},
		{name: "capsule protocol false", path: p("a.example/53/"), modify: func(r *http.Request) { r.Header.Set(http3.CapsuleProtocolHeader, "?0") }, status: 400},
		{name: "capsule protocol garbage", path: p("a.example/53/"), modify: func(r *http.Request) { r.Header.Set(http3.CapsuleProtocolHeader, "yes") }, status: 400},
		{name: "no capsule protocol header", path: p("a.example/53/"), modify: func(r *http.Request) { r.Header.Del(http3.CapsuleProtocolHeader) }, want: "a.example:53"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			authority := auth
			if tt.authority != "" || tt.name == "empty authority" {
				authority = tt.authority
			}
			r := udpRequest(t, authority, tt.path)
			if tt.modify != nil {
				tt.modify(r)
			}
			got, err := parseUDPRequest(r)
			if tt.want != "" {
				if err != nil {
					t.Fatalf("parseUDPRequest(%q) = %v, want %s", tt.path, err, tt.want)
				}
				if got.String() != tt.want {
					t.Errorf("parseUDPRequest(%q) = %s, want %s", tt.path, got, tt.want)
				}
				return
			}
			re, ok := errors.AsType[*udpRequestError](err)
			if !ok {
				t.Fatalf("parseUDPRequest(%q) = %v, %v; want a *udpRequestError", tt.path, got, err)
			}
			if re.status != tt.status || !strings.Contains(re.reason, tt.reason) {
				t.Errorf("parseUDPRequest(%q) = %d %q, want %d containing %q", tt.path, re.status, re.reason, tt.status, tt.reason)
			}
		})
	}
}

// FuzzParseUDPRequest checks the request validation on arbitrary paths and
// authorities: it never panics, refusals are 4xx/5xx with a reason, and an
// accepted target is valid and survives a round trip through masque-go's
// client request builder.
func FuzzParseUDPRequest(f *testing.F) {
	for _, s := range []string{
		UDPPathPrefix + "198.18.2.2/7/",
		UDPPathPrefix + "2001%3Adb8%3A%3A2/53/",
		UDPPathPrefix + "dns.example./53/",
		UDPPathPrefix + "a.example/0/",
		UDPPathPrefix + "a%2Fb/65536/",
		UDPPathPrefix + "fe80%3A%3A1%25eth0/53/",
		UDPPathPrefix + "a//",
	} {
		f.Add("198.18.1.2:4433", s)
	}
	f.Add("[2001:db8::1]:4433", UDPPathPrefix+"x.example/443/")
	f.Fuzz(func(t *testing.T, authority, path string) {
		u, err := url.ParseRequestURI(path)
		if err != nil {
			return
		}
		r := &http.Request{Method: http.MethodConnect, Proto: "connect-udp", Host: authority, URL: u, Header: http.Header{}}
		got, err := parseUDPRequest(r)
		if err != nil {
			re, ok := errors.AsType[*udpRequestError](err)
			if !ok || re.status < 400 || re.status > 599 || re.reason == "" {
				t.Fatalf("parseUDPRequest(%q, %q) = %v; want a *udpRequestError with a 4xx/5xx status and a reason", authority, path, err)
			}
			return
		}
		if got.port == 0 {
			t.Fatalf("accepted port 0: %q", path)
		}
		if got.addr.IsValid() == (got.name != "") {
			t.Fatalf("target %#v is neither (or both) an address and a name", got)
		}
		if got.addr.IsValid() && (got.addr.Zone() != "" || got.addr.Is4In6()) {
			t.Fatalf("accepted address %v with a zone or mapped", got.addr)
		}
		if got.name != "" && (len(got.name) > 253 || strings.ToLower(got.name) != got.name || net.ParseIP(got.name) != nil) {
			t.Fatalf("accepted name %q", got.name)
		}
		// Round trip: masque-go's client builds the same target from it.
		tmpl, err := uritemplate.New("https://" + authority + UDPPathPrefix + udpTemplateVars)
		if err != nil {
			t.Fatalf("accepted authority %q that makes no template: %v", authority, err)
		}
		if _, err := masque.NewRequest(context.Background(), tmpl, got.String()); err != nil {
			t.Fatalf("masque.NewRequest(%s): %v", got, err)
		}
		// NewRequest keeps its *http.Request to itself; rebuild what it sends.
		raw, _ := tmpl.Expand(uritemplate.Values{
			"target_host": uritemplate.String(hostOf(got)),
			"target_port": uritemplate.String(strconv.Itoa(int(got.port))),
		})
		ru, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("expansion %q does not parse: %v", raw, err)
		}
		again, err := parseUDPRequest(udpRequest(t, ru.Host, ru.RequestURI()))
		if err != nil || again != got {
			t.Fatalf("round trip of %s via %q = %v, %v", got, raw, again, err)
		}
	})
}

func hostOf(t udpTarget) string {
	if t.addr.IsValid() {
		return t.addr.String()
	}
	return t.name
}

func TestDNSRefusal(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		why        udpRefusal
		psErr, rc  string
		wantStatus int
	}{
		{"not found", &net.DNSError{Err: "no such host", IsNotFound: true}, udpRefuseDNSError, "dns_error", "NXDOMAIN", 502},
		{"empty answer", nil, udpRefuseDNSError, "dns_error", "NXDOMAIN", 502},
		{"timeout", &net.DNSError{Err: "i/o timeout", IsTimeout: true}, udpRefuseDNSTimeout, "dns_timeout", "", 504},
		{"deadline", context.DeadlineExceeded, udpRefuseDNSTimeout, "dns_timeout", "", 504},
		{"servfail", &net.DNSError{Err: "server misbehaving"}, udpRefuseDNSError, "dns_error", "SERVFAIL", 502},
	}
	for _, tt := range tests {
		why, ps := dnsRefusal(tt.err)
		if why != tt.why || ps.err != tt.psErr || ps.rcode != tt.rc || udpRefusalStatus(why) != tt.wantStatus {
			t.Errorf("%s: dnsRefusal = %v %+v (status %d), want %v %s rcode %q (%d)", tt.name, why, ps, udpRefusalStatus(why), tt.why, tt.psErr, tt.rc, tt.wantStatus)
		}
	}
}

func TestProxyStatusHeader(t *testing.T) {
	tests := []struct {
		ps   proxyStatus
		want string
	}{
		{proxyStatus{err: "destination_ip_prohibited", details: "loopback"}, `masque;error=destination_ip_prohibited;details="loopback"`},
		{proxyStatus{err: "dns_error", rcode: "NXDOMAIN"}, `masque;error=dns_error;rcode="NXDOMAIN"`},
		{proxyStatus{nextHop: "198.18.2.2:7"}, `masque;next-hop="198.18.2.2:7"`},
		{proxyStatus{details: "bad \"x\"\n\xff"}, `masque;details="bad \"x\"??"`},
	}
	for _, tt := range tests {
		if got := tt.ps.header(); got != tt.want {
			t.Errorf("%+v.header() = %s, want %s", tt.ps, got, tt.want)
		}
	}
}
