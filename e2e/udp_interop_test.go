package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Interop with masque-go v0.6.0's own tools, built from the module proxy by
// buildMasqueGo: its cmd/client against our masqued, and our masque udp
// against its cmd/proxy.

// udpTemplate is RFC 9298's default template on the test server's address.
const udpTemplate = "https://" + serverAddr + "/.well-known/masque/udp/{target_host}/{target_port}/"

// TestUDPInteropMasqueGoClient: masque-go's cmd/client fetches a page from
// an HTTP/3 origin in the target namespace, with QUIC carried through our
// masqued's CONNECT-UDP. The client sends no credentials, so the operator
// opens exactly that origin to anonymous requests; any other target is
// refused.
func TestUDPInteropMasqueGoClient(t *testing.T) {
	client, _ := buildMasqueGo(t)
	tp := newTopo(t, false)
	const origin = targetIP4 + ":8443"
	srv := tp.startServer(t, "--udp-anonymous", origin)
	cert, originCA := originCert(t, targetIP4)
	const body = "hello through CONNECT-UDP"
	serveHTTP3(t, tp.target, origin, cert, body)

	// masque-go's client trusts the system roots (for the proxy and the
	// origin alike): point them at both CAs.
	serverCA, err := os.ReadFile(filepath.Join(env.certDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(t.TempDir(), "roots.pem")
	if err := os.WriteFile(bundle, append(serverCA, originCA...), 0o644); err != nil {
		t.Fatal(err)
	}

	r := runIn(t, tp.client, 30*time.Second, "env", "SSL_CERT_FILE="+bundle, client, "-t", udpTemplate, "https://"+origin+"/hello")
	if r.code != 0 || !strings.Contains(r.stderr, "HTTP status: 200") || !strings.Contains(r.stderr, body) {
		t.Fatalf("masque-go client through masqued: exit %d, want 0 with HTTP status 200 and the body\nstdout: %s\nstderr: %s", r.code, r.stdout, tail(r.stderr, 3000))
	}
	t.Logf("masque-go client through masqued: %s", firstLine(r.stderr, "HTTP status"))
	m := srv.metrics(t)
	up, down := metricOr0(m, "masque_udp_datagrams_total", `direction="up"`), metricOr0(m, "masque_udp_datagrams_total", `direction="down"`)
	if metricOr0(m, "masque_udp_flows_total") < 1 || up < 3 || down < 3 {
		t.Errorf("server metrics: flows_total %v, datagrams up %v down %v; want a flow that carried a QUIC handshake and a request",
			metricOr0(m, "masque_udp_flows_total"), up, down)
	}

	// Another target is not open to anonymous requests.
	r = runIn(t, tp.client, 30*time.Second, "env", "SSL_CERT_FILE="+bundle, client, "-t", udpTemplate, "https://"+targetIP4+":9443/hello")
	if r.code == 0 || !strings.Contains(r.stderr, "401") {
		t.Errorf("masque-go client to a target outside the anonymous list: exit %d, want a failure with 401\nstderr: %s", r.code, tail(r.stderr, 2000))
	}
}

// TestUDPInteropMasqueGoProxy: our masque udp forwards datagrams through
// masque-go's cmd/proxy to an echo server in the target namespace, every
// one checked byte for byte.
func TestUDPInteropMasqueGoProxy(t *testing.T) {
	_, proxy := buildMasqueGo(t)
	tp := newTopo(t, false)
	serveUDP(t, tp.target, targetIP4+":"+udpEchoPort, echo)
	p := startProc(t, tp.server, "masque-go proxy", proxy, "-t", udpTemplate, "-b", serverAddr,
		"-c", filepath.Join(env.certDir, "server.crt"), "-k", filepath.Join(env.certDir, "server.key"))
	// It prints nothing when ready: wait for its socket.
	waitUntil(t, "masque-go's proxy to listen on "+serverAddr, 10*time.Second, func() bool {
		if p.exited() {
			t.Fatalf("masque-go proxy exited: %s\n%s", p.exitString(), p.stderr)
		}
		out, _ := exec.Command("ip", "netns", "exec", tp.server, "ss", "-Hlun").Output()
		return strings.Contains(string(out), serverAddr)
	})

	// No credentials: masque-go's proxy asks for none.
	f := startUDPForwarder(t, tp.client, serverAddr, 1, "--listen", "127.0.0.1:0", "--target", targetIP4+":"+udpEchoPort)
	c := dialUDPIn(t, tp.client, f.listens[0])
	for i := range 20 {
		exchangeOnce(c, udpPayload(200000+i, 1200), time.Second)
	}
	max := probeMaxPayload(t, c, f)
	const n = 2000
	res := echoRun(c, n, max, 8, 30*time.Second)
	t.Logf("udp echo through masque-go's proxy: %d datagrams of 1-%d bytes, %d echoed intact, %d lost, %d corrupt, %.0f datagrams/s",
		res.sent, max, res.received, res.lost(), res.corrupt, float64(res.received)/res.elapsed.Seconds())
	if res.received != n || res.corrupt != 0 {
		t.Errorf("through masque-go's proxy: %d of %d echoed intact, %d corrupt; want all", res.received, n, res.corrupt)
	}
	if st := f.status(t); st.UDP.Flows != 1 || st.UDP.FlowsRefused != 0 {
		t.Errorf("forwarder status: %d flows, %d refused; want 1 and 0", st.UDP.Flows, st.UDP.FlowsRefused)
	}
}

// firstLine returns the first line of s that contains sub.
func firstLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}
