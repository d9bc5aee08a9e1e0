package main

// h3attack serve: a hostile CONNECT-IP server (issue 14), the other side
// of what the client modes do. It speaks HTTP/3 by hand on quic-go like
// them and answers every CONNECT-IP request with 200 and whatever the
// flags say: addresses, routes and DNS servers of its choosing, DNS floods,
// injected packets (router advertisements, spoofed sources), and GOAWAY or
// a close right after each session. It prints a JSON line per connection
// and per session, and exits after -duration.

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

// Capsule types of RFC 9484 §4.7.3 and of the DNS configuration draft
// that masque implements (ADDRESS_ASSIGN is in h3.go).
const (
	capsuleRouteAdvertisement = 0x03
	capsuleDNSAssign          = 0x1ace79ec
)

type serveConfig struct {
	listen, certFile, keyFile string
	assign, assignLater       []netip.Prefix
	routes                    []route
	dns                       []netip.Addr
	flood6                    int
	routeFlood                int
	routesLater               []route
	routesLaterAfter          time.Duration
	dnsFlood                  int
	dnsFloodEvery             time.Duration
	goAwayAfter, closeAfter   time.Duration // < 0: never
	inject                    []string
	injectEvery               time.Duration
	duration                  time.Duration
}

// route is one IP address range of a ROUTE_ADVERTISEMENT.
type route struct {
	start, end netip.Addr
	proto      uint8
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var c serveConfig
	var assign, routes, dns, inject string
	fs.StringVar(&c.listen, "listen", "198.18.1.2:4433", "UDP address to serve on")
	fs.StringVar(&c.certFile, "cert", "", "server certificate")
	fs.StringVar(&c.keyFile, "key", "", "server certificate's key")
	var assignLater string
	fs.StringVar(&assign, "assign", "100.64.0.2/32", "ADDRESS_ASSIGN: comma-separated prefixes")
	fs.StringVar(&assignLater, "assign-later", "", "ADDRESS_ASSIGN from the second connection on (empty: -assign)")
	fs.StringVar(&routes, "routes", "0.0.0.0/0,::/0", "ROUTE_ADVERTISEMENT: comma-separated CIDR or START-END ranges, each optionally /pPROTO")
	fs.IntVar(&c.flood6, "flood6", 0, "advertise this many more single-address IPv6 ranges in 2001:db8:f::/48, after -routes'")
	var routesLater string
	fs.StringVar(&routesLater, "routes-later", "", "a second ROUTE_ADVERTISEMENT, -routes-later-after the session is up (same syntax as -routes)")
	fs.DurationVar(&c.routesLaterAfter, "routes-later-after", 2*time.Second, "when to send -routes-later")
	fs.IntVar(&c.routeFlood, "route-flood", 0, "send the ROUTE_ADVERTISEMENT this many more times after the first")
	fs.StringVar(&dns, "dns", "", "DNS_ASSIGN: comma-separated server addresses (none: no capsule)")
	fs.IntVar(&c.dnsFlood, "dns-flood", 0, "send this many more DNS_ASSIGN capsules after the first")
	fs.DurationVar(&c.dnsFloodEvery, "dns-flood-every", time.Millisecond, "between the flood's capsules")
	fs.DurationVar(&c.goAwayAfter, "goaway-after", -1, "send GOAWAY this long after each session is up, then close the connection 200 ms later (<0: never)")
	fs.DurationVar(&c.closeAfter, "close-after", -1, "close each connection this long after its session is up (<0: never)")
	fs.StringVar(&inject, "inject", "", "packets to send into each session, comma-separated: ra (router advertisement), src=ADDR (UDP from ADDR to the client's address of its family), to=ADDR (UDP from 198.18.2.2 or 2001:db8:2::2 to ADDR, for the client to forward)")
	fs.DurationVar(&c.injectEvery, "inject-every", 500*time.Millisecond, "between injections")
	fs.DurationVar(&c.duration, "duration", 30*time.Second, "the longest the run may take")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if c.assign, err = parseList(assign, netip.ParsePrefix); err != nil {
		return fmt.Errorf("-assign: %w", err)
	}
	if c.assignLater, err = parseList(assignLater, netip.ParsePrefix); err != nil {
		return fmt.Errorf("-assign-later: %w", err)
	}
	if len(c.assignLater) == 0 {
		c.assignLater = c.assign
	}
	if c.routes, err = parseList(routes, parseRoute); err != nil {
		return fmt.Errorf("-routes: %w", err)
	}
	for i := range c.flood6 {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0x0f, 14: byte(i >> 8), 15: byte(i)})
		c.routes = append(c.routes, route{start: a, end: a})
	}
	if c.routesLater, err = parseList(routesLater, parseRoute); err != nil {
		return fmt.Errorf("-routes-later: %w", err)
	}
	if c.dns, err = parseList(dns, netip.ParseAddr); err != nil {
		return fmt.Errorf("-dns: %w", err)
	}
	if inject != "" {
		c.inject = strings.Split(inject, ",")
		for _, k := range c.inject {
			_, addr, _ := strings.Cut(k, "=")
			if _, err := netip.ParseAddr(addr); k != "ra" && (!strings.HasPrefix(k, "src=") && !strings.HasPrefix(k, "to=") || err != nil) {
				return fmt.Errorf("-inject: unknown kind %q", k)
			}
		}
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return err
	}
	ln, err := quic.ListenAddr(c.listen, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h3"}},
		&quic.Config{EnableDatagrams: true, MaxIdleTimeout: 30 * time.Second})
	if err != nil {
		return err
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), c.duration)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	emit(map[string]any{"event": "listening", "addr": ln.Addr().String()})
	var wg sync.WaitGroup
	defer wg.Wait()
	var n atomic.Int64
	for {
		qc, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				emit(map[string]any{"event": "done", "conns": n.Load()})
				return nil
			}
			return err
		}
		i := n.Add(1)
		emit(map[string]any{"event": "conn", "i": i, "remote": qc.RemoteAddr().String(), "at_unix_ms": time.Now().UnixMilli()})
		wg.Go(func() {
			defer qc.CloseWithError(0, "")
			if err := c.serveConn(ctx, qc, i); err != nil {
				emit(map[string]any{"event": "conn_error", "i": i, "err": err.Error()})
			}
		})
	}
}

// serveConn serves one connection: our control stream, the peer's
// unidirectional streams drained, and each CONNECT-IP request answered.
func (c *serveConfig) serveConn(ctx context.Context, qc *quic.Conn, i int64) error {
	ctrl, err := qc.OpenUniStream()
	if err != nil {
		return err
	}
	b := quicvarint.Append(nil, 0x00) // control stream
	b = append(b, settingsFrame(setting{0x08, 1}, setting{0x33, 1})...)
	if _, err := ctrl.Write(b); err != nil {
		return err
	}
	go func() {
		for {
			str, err := qc.AcceptUniStream(ctx)
			if err != nil {
				return
			}
			go func() {
				var buf [512]byte
				for {
					if _, err := str.Read(buf[:]); err != nil {
						return
					}
				}
			}()
		}
	}()
	for {
		str, err := qc.AcceptStream(ctx)
		if err != nil {
			return nil
		}
		go c.serveSession(ctx, qc, ctrl, str, i)
	}
}

// serveSession answers one request with 200 and the capsules of c, then
// injects packets, floods DNS, sends GOAWAY or closes, as c says.
func (c *serveConfig) serveSession(ctx context.Context, qc *quic.Conn, ctrl *quic.SendStream, str *quic.Stream, i int64) {
	r := bufio.NewReader(str)
	for {
		typ, _, err := readFrame(r)
		if err != nil {
			return
		}
		if typ == 0x01 { // HEADERS
			break
		}
	}
	resp := appendFrame(nil, 0x01, encodeFields([]qpack.HeaderField{
		{Name: ":status", Value: "200"}, {Name: "capsule-protocol", Value: "?1"},
	}))
	var caps []byte
	assign := c.assign
	if i > 1 {
		assign = c.assignLater
	}
	var es []addressEntry
	for _, p := range assign {
		es = append(es, addressEntry{prefix: p})
	}
	caps = appendAddresses(caps, capsuleAddressAssign, es)
	caps = appendRoutes(caps, c.routes)
	if len(c.dns) > 0 {
		caps = appendDNS(caps, c.dns)
	}
	if _, err := str.Write(appendFrame(resp, 0x00, caps)); err != nil {
		return
	}
	emit(map[string]any{"event": "session", "i": i, "stream": int64(str.StreamID()), "at_unix_ms": time.Now().UnixMilli()})
	go func() {
		var buf [512]byte
		for {
			if _, err := r.Read(buf[:]); err != nil {
				return
			}
		}
	}()
	if c.routeFlood > 0 {
		adv := appendFrame(nil, 0x00, appendRoutes(nil, c.routes))
		for range c.routeFlood {
			if _, err := str.Write(adv); err != nil {
				return
			}
		}
		emit(map[string]any{"event": "route_flood_sent", "i": i, "capsules": c.routeFlood, "bytes": c.routeFlood * len(adv)})
	}
	for k := range c.dnsFlood {
		dns := append([]netip.Addr(nil), c.dns...)
		if len(dns) == 0 {
			dns = []netip.Addr{netip.AddrFrom4([4]byte{198, 18, 2, byte(k%200 + 1)})}
		}
		if _, err := str.Write(appendFrame(nil, 0x00, appendDNS(nil, dns))); err != nil {
			return
		}
		time.Sleep(c.dnsFloodEvery)
	}
	prefix := append(quicvarint.Append(nil, uint64(str.StreamID()/4)), 0)
	var client4, client6 netip.Addr
	for _, p := range assign {
		if p.Addr().Is4() && !client4.IsValid() {
			client4 = p.Addr()
		} else if p.Addr().Is6() && !client6.IsValid() {
			client6 = p.Addr()
		}
	}
	var goAway, closeNow, later <-chan time.Time // nil: never
	if len(c.routesLater) > 0 {
		later = time.After(c.routesLaterAfter)
	}
	if c.goAwayAfter >= 0 {
		goAway = time.After(c.goAwayAfter)
	}
	if c.closeAfter >= 0 {
		closeNow = time.After(c.closeAfter)
	}
	tick := time.NewTicker(c.injectEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-str.Context().Done():
			return
		case <-goAway:
			next := (str.StreamID()/4 + 1) * 4
			ctrl.Write(appendFrame(nil, 0x07, quicvarint.Append(nil, uint64(next))))
			emit(map[string]any{"event": "goaway", "i": i})
			time.Sleep(200 * time.Millisecond)
			qc.CloseWithError(0x100, "hostile GOAWAY loop")
			return
		case <-later:
			if _, err := str.Write(appendFrame(nil, 0x00, appendRoutes(nil, c.routesLater))); err != nil {
				return
			}
			emit(map[string]any{"event": "routes_later", "i": i})
		case <-closeNow:
			emit(map[string]any{"event": "close", "i": i})
			qc.CloseWithError(0x100, "hostile close loop")
			return
		case <-tick.C:
			for _, k := range c.inject {
				if p := injectPacket(k, client4, client6); p != nil {
					qc.SendDatagram(append(append([]byte(nil), prefix...), p...))
				}
			}
		}
	}
}

// parseList parses a comma-separated list with parse; "" is empty.
func parseList[T any](s string, parse func(string) (T, error)) ([]T, error) {
	var out []T
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := parse(f)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// parseRoute parses CIDR or START-END, optionally followed by /pPROTO.
func parseRoute(s string) (route, error) {
	var r route
	if i := strings.Index(s, "/p"); i >= 0 {
		p, err := strconv.ParseUint(s[i+2:], 10, 8)
		if err != nil {
			return r, err
		}
		r.proto, s = uint8(p), s[:i]
	}
	if lo, hi, ok := strings.Cut(s, "-"); ok {
		a, err1 := netip.ParseAddr(lo)
		b, err2 := netip.ParseAddr(hi)
		if err := errors.Join(err1, err2); err != nil {
			return r, err
		}
		r.start, r.end = a, b
		return r, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return r, err
	}
	p = p.Masked()
	r.start, r.end = p.Addr(), lastOf(p)
	return r, nil
}

func lastOf(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// appendRoutes appends a ROUTE_ADVERTISEMENT (RFC 9484 §4.7.3).
func appendRoutes(b []byte, rs []route) []byte {
	var v []byte
	for _, r := range rs {
		if r.start.Is4() {
			v = append(v, 4)
		} else {
			v = append(v, 6)
		}
		v = append(v, r.start.AsSlice()...)
		v = append(v, r.end.AsSlice()...)
		v = append(v, r.proto)
	}
	return appendCapsule(b, capsuleRouteAdvertisement, v)
}

// appendDNS appends a DNS_ASSIGN capsule naming servers.
func appendDNS(b []byte, servers []netip.Addr) []byte {
	var v4, v6 []netip.Addr
	for _, a := range servers {
		if a.Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}
	v := quicvarint.Append(nil, 1) // nameservers
	v = append(v, 0, 1)            // service priority
	v = quicvarint.Append(v, uint64(len(v4)))
	for _, a := range v4 {
		v = append(v, a.AsSlice()...)
	}
	v = quicvarint.Append(v, uint64(len(v6)))
	for _, a := range v6 {
		v = append(v, a.AsSlice()...)
	}
	v = append(v, 0, 0, 0, 0)
	return appendCapsule(b, capsuleDNSAssign, v)
}

// injectPacket builds one packet of kind for a client at c4 / c6 (nil for
// a kind that needs an address the client lacks).
func injectPacket(kind string, c4, c6 netip.Addr) []byte {
	if kind == "ra" {
		return routerAdvertisement()
	}
	if to, ok := strings.CutPrefix(kind, "to="); ok {
		dst, err := netip.ParseAddr(to)
		switch {
		case err != nil:
			return nil
		case dst.Is4():
			return udp4Packet(netip.MustParseAddr("198.18.2.2"), dst, 53, 40001, []byte("to be forwarded"))
		default:
			return udp6Packet(netip.MustParseAddr("2001:db8:2::2"), dst, 53, 40001, []byte("to be forwarded"))
		}
	}
	src, err := netip.ParseAddr(strings.TrimPrefix(kind, "src="))
	switch {
	case err != nil:
		return nil
	case src.Is4() && c4.IsValid():
		return udp4Packet(src, c4, 53, 40000, []byte("spoofed source"))
	case src.Is6() && c6.IsValid():
		return udp6Packet(src, c6, 53, 40000, []byte("spoofed source"))
	}
	return nil
}

// routerAdvertisement is an RA from fe80::1 to all nodes (RFC 4861 §4.2):
// router lifetime 1800 s (a default route), an on-link 2000::/3 and an
// autonomous 2001:db8:77::/64 (a SLAAC address).
func routerAdvertisement() []byte {
	icmp := []byte{134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0}
	pio := func(p netip.Prefix, flags byte) []byte {
		o := []byte{3, 4, byte(p.Bits()), flags}
		o = binary.BigEndian.AppendUint32(o, 86400)
		o = binary.BigEndian.AppendUint32(o, 14400)
		o = append(o, 0, 0, 0, 0)
		return append(o, p.Addr().AsSlice()...)
	}
	icmp = append(icmp, pio(netip.MustParsePrefix("2000::/3"), 0x80)...)
	icmp = append(icmp, pio(netip.MustParsePrefix("2001:db8:77::/64"), 0xc0)...)
	return ip6Packet(netip.MustParseAddr("fe80::1"), netip.MustParseAddr("ff02::1"), 58, 255, icmp)
}

func ip6Packet(src, dst netip.Addr, next byte, hop byte, payload []byte) []byte {
	h := make([]byte, 40, 40+len(payload))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	h[6], h[7] = next, hop
	copy(h[8:24], src.AsSlice())
	copy(h[24:40], dst.AsSlice())
	p := append(h, payload...)
	// ICMPv6 (at 2) and UDP (at 6) checksums over the pseudo-header.
	at := map[byte]int{58: 2, 17: 6}[next]
	binary.BigEndian.PutUint16(p[40+at:], 0)
	sum := uint32(0)
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(p[8:40])
	add([]byte{0, 0, byte(len(payload) >> 8), byte(len(payload)), 0, 0, 0, next})
	add(p[40:])
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(p[40+at:], ^uint16(sum))
	return p
}

func udp6Packet(src, dst netip.Addr, sport, dport uint16, data []byte) []byte {
	u := make([]byte, 8, 8+len(data))
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(data)))
	return ip6Packet(src, dst, 17, 64, append(u, data...))
}

func udp4Packet(src, dst netip.Addr, sport, dport uint16, data []byte) []byte {
	p := make([]byte, 28, 28+len(data))
	p[0], p[8], p[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(p[2:], uint16(28+len(data)))
	copy(p[12:16], src.AsSlice())
	copy(p[16:20], dst.AsSlice())
	sum := uint32(0)
	for i := 0; i < 20; i += 2 {
		sum += uint32(p[i])<<8 | uint32(p[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(p[10:], ^uint16(sum))
	binary.BigEndian.PutUint16(p[20:], sport)
	binary.BigEndian.PutUint16(p[22:], dport)
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(data)))
	return append(p, data...)
}
