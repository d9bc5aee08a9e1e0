// Command hostileip is a hostile CONNECT-IP server (RFC 9484) for the e2e
// tests of issue 14: it accepts any CONNECT-IP request and sends the
// assignment, routes and DNS servers its flags name, whatever they are,
// then holds the session without forwarding a packet. It prints "ready"
// once it listens.
//
//	hostileip -listen 198.18.1.2:4433 -cert server.crt -key server.key \
//	    -assign 100.64.0.9/16 -route 198.18.2.0-198.18.2.255 \
//	    -route 172.16.0.0-172.31.255.255/17 -flood6 2000 -dns 127.0.0.53,198.18.2.53
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"

	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, strings.Split(s, ",")...); return nil }

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "hostileip:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "", "UDP address to listen on")
	certFile := flag.String("cert", "", "TLS certificate")
	keyFile := flag.String("key", "", "TLS key")
	var assign, routes, dns list
	flag.Var(&assign, "assign", "prefixes to assign (comma-separated, repeatable)")
	flag.Var(&routes, "route", "ranges START-END[/PROTO] to advertise, in RFC 9484 order (comma-separated, repeatable)")
	flood6 := flag.Int("flood6", 0, "advertise this many more single-address IPv6 ranges in 2001:db8:f::/48, after -route's")
	flag.Var(&dns, "dns", "DNS servers to send (comma-separated, repeatable)")
	flag.Parse()

	var addrs []netip.Prefix
	for _, s := range assign {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return err
		}
		addrs = append(addrs, p)
	}
	var rs []connectip.IPRoute
	for _, s := range routes {
		r, err := parseRange(s)
		if err != nil {
			return err
		}
		rs = append(rs, r)
	}
	for i := range *flood6 {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0x0f, 14: byte(i >> 8), 15: byte(i)})
		rs = append(rs, connectip.IPRoute{StartIP: a, EndIP: a})
	}
	ns := connectip.DNSNameserver{ServicePriority: 1}
	for _, s := range dns {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return err
		}
		if a.Is4() {
			ns.IPv4Addresses = append(ns.IPv4Addresses, a)
		} else {
			ns.IPv6Addresses = append(ns.IPv6Addresses, a)
		}
	}

	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return err
	}
	ln, err := quic.ListenAddrEarly(*listen,
		&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{http3.NextProtoH3}},
		&quic.Config{EnableDatagrams: true})
	if err != nil {
		return err
	}
	srv := &http3.Server{EnableDatagrams: true, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect || r.Proto != "connect-ip" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		var p connectip.Proxy
		conn, err := p.Proxy(w, &connectip.ProxyRequest{})
		if err != nil {
			fmt.Fprintln(os.Stderr, "hostileip: proxy:", err)
			return
		}
		defer conn.Close()
		if err := conn.AssignAddresses(addrs); err != nil {
			fmt.Fprintln(os.Stderr, "hostileip: assign:", err)
			return
		}
		if err := conn.AdvertiseRoute(rs); err != nil {
			fmt.Fprintln(os.Stderr, "hostileip: routes:", err)
			return
		}
		if len(dns) > 0 {
			if err := conn.SendDNSConfiguration([]connectip.DNSConfiguration{{Nameservers: []connectip.DNSNameserver{ns}}}); err != nil {
				fmt.Fprintln(os.Stderr, "hostileip: dns:", err)
				return
			}
		}
		fmt.Println("session")
		<-r.Context().Done()
	})}
	fmt.Println("ready")
	return srv.ServeListener(ln)
}

// parseRange parses START-END[/PROTO].
func parseRange(s string) (connectip.IPRoute, error) {
	var proto uint64
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		var err error
		if proto, err = strconv.ParseUint(s[i+1:], 10, 8); err != nil {
			return connectip.IPRoute{}, fmt.Errorf("route %q: %v", s, err)
		}
		s = s[:i]
	}
	start, end, ok := strings.Cut(s, "-")
	if !ok {
		return connectip.IPRoute{}, fmt.Errorf("route %q: want START-END", s)
	}
	a, err := netip.ParseAddr(start)
	if err != nil {
		return connectip.IPRoute{}, err
	}
	b, err := netip.ParseAddr(end)
	if err != nil {
		return connectip.IPRoute{}, err
	}
	return connectip.IPRoute{StartIP: a, EndIP: b, IPProtocol: uint8(proto)}, nil
}
