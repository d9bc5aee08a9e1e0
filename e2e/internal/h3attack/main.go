// Command h3attack is a hostile HTTP/3 client for the e2e tests of issue
// 13, and a hostile CONNECT-IP server for those of issue 14. It speaks HTTP/3 by hand on quic-go, quicvarint and qpack (no http3
// client), so that it can send what well-behaved clients never do, and
// reports what the server did about it as JSON lines on stdout. Every run
// is bounded by -duration.
//
//	h3attack pin       -n CONNS -streams S -datagrams D
//	    N connections (round robin over -local), each opening up to S
//	    request streams that announce a HEADERS frame of -announce bytes
//	    and deliver -deliver, then D datagrams of -size bytes for each
//	    stream; it prints "opened" once the streams are open, "ready" once
//	    everything is sent and, per connection, when and with which code
//	    the server closed it and how many streams quic-go let it open.
//	h3attack poolwalk  -capsules K -entries E
//	    one authenticated CONNECT-IP session, then K ADDRESS_REQUEST
//	    capsules (RFC 9484 §4.7.2) of E entries each walking -pool; it
//	    prints the distinct addresses the server assigned.
//	h3attack refuse    -n M -c C
//	    M CONNECT-IP requests with the -token-file's token (a wrong one,
//	    or none) as fast as the server answers, C connections at a time,
//	    a new connection whenever the server closes one.
//	h3attack identity  -case dup-auth-bad-good|dup-auth-good-bad|cert-b-token-a|evil-authority
//	    one request; prints the response status.
//	h3attack conform   -case NAME
//	    one HTTP/3, QPACK or HTTP datagram conformance case; prints how
//	    the connection (or stream) ended.
//	h3attack ipproxy   -listen ADDR -cert F -key F -template URI [-assign …] [-routes …]
//	    connect-ip-go's proxy, which checks :authority against its template,
//	    answering ICMP echo requests (ipproxy.go).
//	h3attack serve     -listen ADDR -cert F -key F [-assign …] [-routes …] [-dns …]
//	    a CONNECT-IP server that answers every request with the addresses,
//	    routes and DNS servers it is told, and as told floods DNS, injects
//	    packets and sends GOAWAY or closes after each session (serve.go).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/masque-vpn/masque/e2e/internal/localaddr"
	"github.com/quic-go/quic-go"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "h3attack: %v\n", err)
		os.Exit(1)
	}
}

// out writes JSON lines to stdout, one writer at a time.
var out = struct {
	sync.Mutex
	enc *json.Encoder
}{enc: json.NewEncoder(os.Stdout)}

func emit(v any) {
	out.Lock()
	defer out.Unlock()
	out.enc.Encode(v)
}

// common are the flags every mode has.
type common struct {
	server, serverName, authority string
	caFile, tokenFile, wrongFile  string
	certFile, keyFile             string
	local                         string
	duration                      time.Duration
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: h3attack pin|poolwalk|refuse|identity|conform [flags]")
	}
	mode, args := args[0], args[1:]
	if mode == "serve" {
		return serve(args)
	}
	if mode == "ipproxy" {
		return ipproxy(args)
	}
	fs := flag.NewFlagSet(mode, flag.ContinueOnError)
	var c common
	fs.StringVar(&c.server, "server", "198.18.1.2:4433", "masqued address")
	fs.StringVar(&c.serverName, "server-name", "", "TLS server name (default: host of -server)")
	fs.StringVar(&c.authority, "authority", "", ":authority of the requests (default: -server)")
	fs.StringVar(&c.caFile, "ca", "", "CA certificate file")
	fs.StringVar(&c.tokenFile, "token-file", "", "file holding a valid bearer token")
	fs.StringVar(&c.wrongFile, "wrong-token-file", "", "file holding a token the server does not know")
	fs.StringVar(&c.certFile, "cert", "", "client certificate (mTLS)")
	fs.StringVar(&c.keyFile, "key", "", "client certificate's key")
	fs.StringVar(&c.local, "local", "", "local addresses: comma-separated addresses or FIRST-LAST ranges (default: any)")
	fs.DurationVar(&c.duration, "duration", 30*time.Second, "the longest the run may take")

	var m interface {
		run(ctx context.Context, d *dialer, c common) error
	}
	switch mode {
	case "pin":
		m = pinFlags(fs)
	case "poolwalk":
		m = poolwalkFlags(fs)
	case "refuse":
		m = refuseFlags(fs)
	case "identity":
		m = identityFlags(fs)
	case "conform":
		m = conformFlags(fs)
	default:
		return fmt.Errorf("unknown mode %q: want pin, poolwalk, refuse, identity or conform", mode)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	d, err := c.dialer()
	if err != nil {
		return err
	}
	defer func() {
		for _, tr := range d.trs {
			tr.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), c.duration)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return m.run(ctx, d, c)
}

// dialer builds the dialer of c: TLS with the CA (and the client
// certificate if any), full handshakes only, one transport per local
// address.
func (c common) dialer() (*dialer, error) {
	raddr, err := net.ResolveUDPAddr("udp", c.server)
	if err != nil {
		return nil, err
	}
	if c.serverName == "" {
		c.serverName = raddr.IP.String()
	}
	if c.authority == "" {
		c.authority = c.server
	}
	tc := &tls.Config{ServerName: c.serverName, NextProtos: []string{"h3"}, RootCAs: x509.NewCertPool()}
	if c.caFile != "" {
		pem, err := os.ReadFile(c.caFile)
		if err != nil {
			return nil, err
		}
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", c.caFile)
		}
	}
	if c.certFile != "" {
		cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
		if err != nil {
			return nil, err
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	addrs, err := localaddr.Parse(c.local)
	if err != nil {
		return nil, err
	}
	d := &dialer{raddr: raddr, authority: c.authority, tlsConf: tc}
	for _, a := range addrs {
		uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: a.AsSlice()})
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", a, err)
		}
		d.trs = append(d.trs, &quic.Transport{Conn: uc})
	}
	return d, nil
}

// readToken reads a token file; "" gives "".
func readToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
