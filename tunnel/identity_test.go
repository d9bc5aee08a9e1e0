package tunnel

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/masque-vpn/masque/policy"
	"github.com/masque-vpn/masque/quicio"
	"github.com/quic-go/qpack"
)

// Identity and :authority checks over real QUIC: two Authorization
// fields, a certificate and a token that disagree, and requests for hosts
// that are not the server's.

// testCA issues client certificates that a test server accepts.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	cert, key := issueCert(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "test client CA"},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}, nil, nil)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue returns a client certificate with common name cn (and, to show that
// they are no identities, an email address and a DNS name as SANs).
func (ca *testCA) issue(t testing.TB, cn string) tls.Certificate {
	t.Helper()
	cert, key := issueCert(t, &x509.Certificate{
		Subject:        pkix.Name{CommonName: cn},
		DNSNames:       []string{"bob"},
		EmailAddresses: []string{"alice@example.com"},
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca.cert, ca.key)
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key}
}

// startMTLSServer is startUDPBadServer accepting client certificates of
// ca besides the tokens; opts apply last.
func startMTLSServer(t *testing.T, ca *testCA, opts ...func(*ServerConfig)) *testServer {
	t.Helper()
	mtls := func(c *quicio.Config) {
		c.TLSConfig.ClientCAs = ca.pool
		c.TLSConfig.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return startServerTLS(t, nil, mtls, append([]func(*ServerConfig){func(c *ServerConfig) {
		c.Auth.ClientCerts = true
		d, err := policy.NewDestinations(policy.DestinationsConfig{
			ServerAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
			Allow:       []netip.Prefix{netip.PrefixFrom(udpTargetAddr, 32)},
		})
		if err != nil {
			t.Fatal(err)
		}
		c.Destinations = d
		c.UDP.Lookup = fakeLookup
	}}, opts...)...)
}

// withClientCert returns a copy of ts whose clients present cert.
func withClientCert(ts *testServer, cert tls.Certificate) *testServer {
	c := *ts
	c.tls = ts.tls.Clone()
	c.tls.Certificates = []tls.Certificate{cert}
	return &c
}

// withAuth returns fields with its Authorization fields replaced by one
// per value, in order.
func withAuth(fields []qpack.HeaderField, values ...string) []qpack.HeaderField {
	fields = slices.DeleteFunc(slices.Clone(fields), func(f qpack.HeaderField) bool { return f.Name == "authorization" })
	for _, v := range values {
		fields = append(fields, qpack.HeaderField{Name: "authorization", Value: v})
	}
	return fields
}

// sessionsOf returns how many CONNECT-IP sessions identity id holds.
func sessionsOf(s *Server, id policy.Identity) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.perID[id]
}

// flowsOf returns how many CONNECT-UDP flows identity id holds.
func flowsOf(s *Server, id policy.Identity) int {
	s.udp.mu.Lock()
	defer s.udp.mu.Unlock()
	return s.udp.perID[id]
}

// Two Authorization fields are a bad request whichever comes first, for
// CONNECT-IP and CONNECT-UDP alike, counted under bad_request.
func TestDuplicateAuthorizationIsRefused(t *testing.T) {
	ts := startUDPBadServer(t)
	h := dialH3(t, ts)
	good, bad := "Bearer "+testToken, "Bearer wrong-token-wrong-token"
	target := netip.AddrPortFrom(udpTargetAddr, 7)
	tests := []struct {
		name   string
		fields []qpack.HeaderField
		udp    bool
	}{
		{"connect-ip, good then bad", withAuth(connectIPFields(ts.addr, ""), good, bad), false},
		{"connect-ip, bad then good", withAuth(connectIPFields(ts.addr, ""), bad, good), false},
		{"connect-ip, good twice", withAuth(connectIPFields(ts.addr, ""), good, good), false},
		{"connect-udp, good then bad", withAuth(udpFlowFields(ts.addr, target), good, bad), true},
		{"connect-udp, bad then good", withAuth(udpFlowFields(ts.addr, target), bad, good), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			ipBefore := ts.srv.counters.refused[refuseBadRequest].Load()
			udpBefore := ts.srv.counters.udp.refused[udpRefuseBadRequest].Load()
			if got := h.request(tt.fields).status(); got != "400" {
				t.Errorf("status %s, want 400", got)
			}
			ipWant, udpWant := ipBefore+1, udpBefore
			if tt.udp {
				ipWant, udpWant = ipBefore, udpBefore+1
			}
			if got := ts.srv.counters.refused[refuseBadRequest].Load(); got != ipWant {
				t.Errorf("refused{bad_request} = %d, want %d", got, ipWant)
			}
			if got := ts.srv.counters.udp.refused[udpRefuseBadRequest].Load(); got != udpWant {
				t.Errorf("udp refused{bad_request} = %d, want %d", got, udpWant)
			}
		})
	}
	h.t = t
	if got := ts.srv.counters.sessionsTotal.Load() + ts.srv.counters.udp.flowsTotal.Load(); got != 0 {
		t.Errorf("sessions and flows opened: %d, want 0", got)
	}
	// One field still works on the same connection.
	if got := h.request(connectIPFields(ts.addr, testToken)).status(); got != "200" {
		t.Errorf("one Authorization field: status %s, want 200", got)
	}
}

// A client certificate and a token must name the same identity, which the
// request then runs as; a certificate alone runs as "cert:" and its CN.
func TestCertificateAndToken(t *testing.T) {
	ca := newTestCA(t)
	ts := startMTLSServer(t, ca)
	target := netip.AddrPortFrom(udpTargetAddr, 7)
	tests := []struct {
		name   string
		cn     string // client certificate; "" for none
		token  string
		status string
		id     policy.Identity // the identity of the session or flow on 200
	}{
		{"cert B, token A", "bob", testToken, "401", ""},
		{"cert A, token B", "alice", testToken + "-bob", "401", ""},
		{"cert of no token's identity, token A", "carol", testToken, "401", ""},
		{"cert A, token A", "alice", testToken, "200", "alice"},
		{"cert B, token B", "bob", testToken + "-bob", "200", "bob"},
		{"cert alone", "alice", "", "200", "cert:alice"},
		{"token alone", "", testToken, "200", "alice"},
	}
	for _, tt := range tests {
		for _, udp := range []bool{false, true} {
			name := tt.name + ", connect-ip"
			if udp {
				name = tt.name + ", connect-udp"
			}
			t.Run(name, func(t *testing.T) {
				cts := ts
				if tt.cn != "" {
					cts = withClientCert(ts, ca.issue(t, tt.cn))
				}
				h := dialH3(t, cts)
				fields := connectIPFields(ts.addr, tt.token)
				if udp {
					fields = udpFlowFields(ts.addr, target)
					if tt.token == "" {
						fields = withAuth(fields)
					} else {
						fields = withAuth(fields, "Bearer "+tt.token)
					}
				}
				authBefore := ts.srv.counters.refused[refuseAuth].Load() + ts.srv.counters.udp.refused[udpRefuseAuth].Load()
				s := h.request(fields)
				if got := s.status(); got != tt.status {
					t.Fatalf("status %s, want %s", got, tt.status)
				}
				authAfter := ts.srv.counters.refused[refuseAuth].Load() + ts.srv.counters.udp.refused[udpRefuseAuth].Load()
				if tt.status == "401" {
					if authAfter != authBefore+1 {
						t.Errorf("unauthenticated refusals %d → %d, want one more", authBefore, authAfter)
					}
					return
				}
				held := sessionsOf(ts.srv, tt.id)
				if udp {
					held = flowsOf(ts.srv, tt.id)
				}
				if held != 1 {
					t.Errorf("identity %q holds %d sessions or flows, want 1", tt.id, held)
				}
			})
		}
	}
}

// udp_allow keyed "cert:CN" restricts a client that has only a
// certificate, and not a token holder whose identity is the same CN.
func TestUDPAllowForCertificateIdentity(t *testing.T) {
	ca := newTestCA(t)
	rules, err := policy.NewUDPRules(policy.UDPRulesConfig{Allow: map[string][]string{
		"cert:alice": {udpTargetAddr.String() + ":7"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ts := startMTLSServer(t, ca, func(c *ServerConfig) { c.UDP.Rules = rules })
	certOnly := dialH3(t, withClientCert(ts, ca.issue(t, "alice")))
	if got := certOnly.request(withAuth(udpFlowFields(ts.addr, netip.AddrPortFrom(udpTargetAddr, 7)))).status(); got != "200" {
		t.Errorf("cert:alice to an allowed target: status %s, want 200", got)
	}
	if got := certOnly.request(withAuth(udpFlowFields(ts.addr, netip.AddrPortFrom(udpTargetAddr, 8)))).status(); got != "403" {
		t.Errorf("cert:alice to another target: status %s, want 403", got)
	}
	token := dialH3(t, ts)
	if got := token.request(udpFlowFields(ts.addr, netip.AddrPortFrom(udpTargetAddr, 8))).status(); got != "200" {
		t.Errorf("token alice (no rule) to another target: status %s, want 200", got)
	}
}

// The :authority must name the server: a name from ServerConfig.Names or
// the address the client dialed (TestBadConnectIPRequestsAreRefused checks
// the port); any other host is 421 Misdirected Request, counted under
// misdirected.
func TestAuthorityMustNameServer(t *testing.T) {
	ts := startMTLSServer(t, newTestCA(t), func(c *ServerConfig) { c.Names = []string{"vpn.example", "*.pool.example"} })
	port := ts.addr[strings.LastIndexByte(ts.addr, ':')+1:]
	h := dialH3(t, ts)
	target := netip.AddrPortFrom(udpTargetAddr, 7)
	tests := []struct {
		authority string
		status    string
	}{
		{"evil.example:" + port, "421"},
		{"localhost:" + port, "421"}, // in the certificate, but not in Names
		{"127.0.0.2:" + port, "421"},
		{"[::1]:" + port, "421"},
		{"127.0.0.1:" + port, "200"}, // the address the client dialed
		{"vpn.example:" + port, "200"},
		{"VPN.Example.:" + port, "200"},
		{"a.pool.example:" + port, "200"},
		{"[::ffff:127.0.0.1]:" + port, "200"},
		{"2001:db8::1", "400"},
	}
	for _, tt := range tests {
		for _, udp := range []bool{false, true} {
			name := tt.authority + ", connect-ip"
			if udp {
				name = tt.authority + ", connect-udp"
			}
			t.Run(name, func(t *testing.T) {
				h.t = t
				fields := withField(connectIPFields(ts.addr, testToken), ":authority", tt.authority)
				if udp {
					fields = withField(udpFlowFields(ts.addr, target), ":authority", tt.authority)
				}
				ipBefore := ts.srv.counters.refused[refuseMisdirected].Load()
				udpBefore := ts.srv.counters.udp.refused[udpRefuseMisdirected].Load()
				if got := h.request(fields).status(); got != tt.status {
					t.Errorf("status %s, want %s", got, tt.status)
				}
				ipWant, udpWant := ipBefore, udpBefore
				if tt.status == "421" && udp {
					udpWant++
				} else if tt.status == "421" {
					ipWant++
				}
				if got := ts.srv.counters.refused[refuseMisdirected].Load(); got != ipWant {
					t.Errorf("refused{misdirected} = %d, want %d", got, ipWant)
				}
				if got := ts.srv.counters.udp.refused[udpRefuseMisdirected].Load(); got != udpWant {
					t.Errorf("udp refused{misdirected} = %d, want %d", got, udpWant)
				}
			})
		}
	}
}

// A server on a wildcard address (masqued's default [::]:443) learns the
// address each connection came to, so a client that dialed an IP address
// may name it in :authority; another of the host's addresses it did not
// dial is not the server's for that connection.
func TestAuthorityWildcardListener(t *testing.T) {
	for _, tt := range []struct{ listen, dial, other string }{
		{"0.0.0.0:0", "127.0.0.1", "127.0.0.2"},
		{"[::]:0", "127.0.0.1", "[::1]"},
		{"[::]:0", "[::1]", "127.0.0.1"},
	} {
		t.Run(tt.listen+" "+tt.dial, func(t *testing.T) {
			if strings.Contains(tt.listen+tt.dial, "::") && !hasIPv6Loopback() {
				t.Skip("no IPv6 loopback")
			}
			ts := startServerTLS(t, nil, func(c *quicio.Config) { c.Addr = tt.listen })
			port := ts.addr[strings.LastIndexByte(ts.addr, ':')+1:]
			dialed := *ts
			dialed.addr = tt.dial + ":" + port
			h := dialH3(t, &dialed)
			if got := h.request(connectIPFields(tt.other+":"+port, testToken)).status(); got != "421" {
				t.Errorf(":authority %s (not dialed): status %s, want 421", tt.other, got)
			}
			if got := h.request(connectIPFields(dialed.addr, testToken)).status(); got != "200" {
				t.Errorf(":authority %s (dialed): status %s, want 200", dialed.addr, got)
			}
		})
	}
}

func hasIPv6Loopback() bool {
	c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		return false
	}
	c.Close()
	return true
}
