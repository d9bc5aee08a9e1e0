package main

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"flag"
	"fmt"
	"net/http"
	"net/netip"
	"os/signal"
	"syscall"
	"time"

	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/yosida95/uritemplate/v3"
)

// ipproxy is connect-ip-go's proxy (not ours): it checks a request against
// its URI template, :authority included, assigns one address, advertises
// routes, and answers every ICMP echo request it is sent, as if from the
// address pinged. A reference peer for masque up's --template.
func ipproxy(args []string) error {
	fs := flag.NewFlagSet("ipproxy", flag.ContinueOnError)
	listen := fs.String("listen", "198.18.1.2:4433", "UDP address to serve on")
	certFile := fs.String("cert", "", "server certificate")
	keyFile := fs.String("key", "", "server certificate's key")
	tmpl := fs.String("template", "https://198.18.1.2:4433/vpn", "the URI template (connect-ip-go takes none with variables)")
	assign := fs.String("assign", "100.64.0.2/32", "the address to assign")
	routes := fs.String("routes", "198.18.2.0/24", "comma-separated CIDR or START-END ranges to advertise")
	duration := fs.Duration("duration", 60*time.Second, "the longest the run may take")
	if err := fs.Parse(args); err != nil {
		return err
	}
	t, err := uritemplate.New(*tmpl)
	if err != nil {
		return fmt.Errorf("-template: %w", err)
	}
	addr, err := netip.ParsePrefix(*assign)
	if err != nil {
		return fmt.Errorf("-assign: %w", err)
	}
	rs, err := parseList(*routes, parseRoute)
	if err != nil {
		return fmt.Errorf("-routes: %w", err)
	}
	var adv []connectip.IPRoute
	for _, r := range rs {
		adv = append(adv, connectip.IPRoute{StartIP: r.start, EndIP: r.end, IPProtocol: r.proto})
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return err
	}
	ln, err := quic.ListenAddrEarly(*listen, http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}}),
		&quic.Config{EnableDatagrams: true, MaxIdleTimeout: 30 * time.Second})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *duration)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv := &http3.Server{EnableDatagrams: true, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, err := connectip.ParseProxyRequest(r, t)
		if err != nil {
			emit(map[string]any{"event": "refused", "authority": r.Host, "err": err.Error()})
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		var p connectip.Proxy
		conn, err := p.Proxy(w, req)
		if err != nil {
			return
		}
		defer conn.Close()
		if err := conn.AssignAddresses([]netip.Prefix{addr}); err != nil {
			return
		}
		if err := conn.AdvertiseRoute(adv); err != nil {
			return
		}
		emit(map[string]any{"event": "session", "authority": r.Host})
		buf := make([]byte, 1500)
		for {
			n, err := conn.ReadPacket(buf)
			if err != nil {
				return
			}
			if reply, ok := echoReply(buf[:n]); ok {
				conn.WritePacket(reply)
			}
		}
	})}
	go func() { <-ctx.Done(); srv.Close() }()
	emit(map[string]any{"event": "listening", "addr": ln.Addr().String()})
	if err := srv.ServeListener(ln); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// echoReply turns an IPv4 ICMP echo request into its reply: addresses
// swapped (the header checksum stays: its sum does not change), type 0,
// the ICMP checksum adjusted (RFC 1624).
func echoReply(p []byte) ([]byte, bool) {
	if len(p) < 20 || p[0]>>4 != 4 || p[9] != 1 {
		return nil, false
	}
	ihl := int(p[0]&0x0f) * 4
	if len(p) < ihl+8 || p[ihl] != 8 {
		return nil, false
	}
	r := append([]byte(nil), p...)
	copy(r[12:16], p[16:20])
	copy(r[16:20], p[12:16])
	r[ihl] = 0
	sum := uint32(binary.BigEndian.Uint16(r[ihl+2:])) + 0x0800
	sum = (sum & 0xffff) + sum>>16
	binary.BigEndian.PutUint16(r[ihl+2:], uint16(sum))
	return r, true
}
