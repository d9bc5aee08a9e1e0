// Command spoofclient is a hostile CONNECT-IP client for the end-to-end
// tests. It opens a CONNECT-IP session (RFC 9484) with quic-go's HTTP/3 and
// connect-ip-go directly, advertises routes covering the whole address space
// so that connect-ip-go's own client-side source check lets spoofed packets
// out, waits for its address assignment and then sends UDP datagrams to a
// target: n from its assigned address (tag "good", "good6") and n from each
// spoofed source (tag "spoof-<i>"). A correct server forwards only the good
// ones; the target counts what arrives.
//
// It prints one JSON object: the assigned prefixes, the routes the server
// advertised and how many packets of each tag it handed to WritePacket.
//
// With -probe it sends, instead, packets from its assigned addresses to a
// list of destinations and counts what comes back for each (probe.go).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"time"

	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/yosida95/uritemplate/v3"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "spoofclient: %v\n", err)
		os.Exit(1)
	}
}

// dropCounter counts the lines connect-ip-go logs through the standard logger
// when WritePacket drops a packet (it returns no error then).
type dropCounter struct{ n atomic.Int64 }

func (d *dropCounter) Write(p []byte) (int, error) {
	if strings.Contains(string(p), "dropping") {
		d.n.Add(1)
	}
	return os.Stderr.Write(p)
}

type result struct {
	Assigned []string       `json:"assigned"`
	Routes   []string       `json:"routes"`
	Sent     map[string]int `json:"sent"`    // accepted by WritePacket
	Dropped  map[string]int `json:"dropped"` // dropped by connect-ip-go's client-side checks
	Status   int            `json:"status"`

	// Probe mode only (probe.go).
	Probes   map[string]*probeResult `json:"probes,omitempty"`
	ICMPFrom map[string]int          `json:"icmp_from,omitempty"` // sources of the ICMP errors received
	Other    int                     `json:"other,omitempty"`     // packets received that match no probe
}

func run() error {
	server := flag.String("server", "198.18.1.2:4433", "server address")
	serverName := flag.String("server-name", "", "TLS server name (default: host of -server)")
	caFile := flag.String("ca", "", "CA certificate file")
	token := flag.String("token", "", "bearer token")
	rawURL := flag.String("url", "", "CONNECT-IP URI template (default https://SERVER/.well-known/masque/ip/*/*/)")
	target4 := flag.String("target4", "198.18.2.2:9200", "IPv4 UDP target")
	target6 := flag.String("target6", "[2001:db8:2::2]:9200", "IPv6 UDP target (empty: none)")
	spoof := flag.String("spoof", "100.64.0.200,198.18.9.9,fd6d:6173:7175:6500::200,2001:db8:9::9", "comma-separated spoofed sources")
	n := flag.Int("n", 100, "datagrams per tag")
	interval := flag.Duration("interval", time.Millisecond, "pause between datagrams")
	timeout := flag.Duration("timeout", 30*time.Second, "overall timeout")
	var po probeOptions
	flag.StringVar(&po.dsts, "probe", "", "comma-separated destination addresses: probe them instead of sending spoofed datagrams")
	flag.StringVar(&po.kinds, "kinds", "udp", "probe packets to send to each destination: comma-separated udp, tcp, echo")
	flag.IntVar(&po.udpPort, "udp-port", 9200, "destination port of the udp probes")
	flag.IntVar(&po.tcpPort, "tcp-port", 9201, "destination port of the tcp probes (SYNs; a SYN-ACK is answered with an ACK)")
	flag.IntVar(&po.pps, "pps", 1000, "probe packets per second, all destinations together")
	flag.DurationVar(&po.wait, "wait", time.Second, "how long to keep counting after the last probe")
	flag.Parse()

	drops := &dropCounter{}
	log.SetOutput(drops)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	host, _, err := net.SplitHostPort(*server)
	if err != nil {
		return err
	}
	if *serverName == "" {
		*serverName = host
	}
	pool := x509.NewCertPool()
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return err
		}
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("no certificate in %s", *caFile)
		}
	}
	if *rawURL == "" {
		*rawURL = "https://" + *server + "/.well-known/masque/ip/*/*/"
	}
	tmpl, err := uritemplate.New(*rawURL)
	if err != nil {
		return fmt.Errorf("template: %w", err)
	}
	req, err := connectip.NewRequest(ctx, tmpl)
	if err != nil {
		return err
	}
	req.Header().Set("Authorization", "Bearer "+*token)

	tr := &connectip.Transport{
		TLSClientConfig: &tls.Config{
			ServerName: *serverName,
			RootCAs:    pool,
			NextProtos: []string{http3.NextProtoH3},
		},
		QUICConfig: &quic.Config{EnableDatagrams: true, InitialPacketSize: 1350, MaxIdleTimeout: 10 * time.Second},
	}
	conn, rsp, err := tr.Dial(req)
	res := result{Sent: map[string]int{}, Dropped: map[string]int{}}
	if rsp != nil {
		res.Status = rsp.StatusCode
	}
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()

	// Advertise everything: connect-ip-go's WritePacket accepts a source
	// that is either assigned to us or inside a route we advertised.
	if err := conn.AdvertiseRoute([]connectip.IPRoute{
		{StartIP: netip.MustParseAddr("0.0.0.0"), EndIP: netip.MustParseAddr("255.255.255.255")},
		{StartIP: netip.MustParseAddr("::"), EndIP: netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")},
	}); err != nil {
		return fmt.Errorf("advertise routes: %w", err)
	}

	var assigned []netip.Prefix
	for len(assigned) == 0 {
		aa, err := conn.ReceiveAddressAssignment(ctx)
		if err != nil {
			return fmt.Errorf("waiting for the address assignment: %w", err)
		}
		for _, a := range aa {
			if !a.Rejected() {
				assigned = append(assigned, a.IPPrefix)
			}
		}
	}
	for _, p := range assigned {
		res.Assigned = append(res.Assigned, p.String())
	}

	// connect-ip-go also checks the destination against the routes the
	// server advertised: wait until they cover the targets.
	t4, err := netip.ParseAddrPort(*target4)
	if err != nil {
		return err
	}
	var t6 netip.AddrPort
	if *target6 != "" {
		if t6, err = netip.ParseAddrPort(*target6); err != nil {
			return err
		}
	}
	var routes []connectip.IPRoute
	for !covers(routes, t4.Addr()) {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		routes, err = conn.Routes(rctx)
		rcancel()
		if err != nil {
			return fmt.Errorf("waiting for a route advertisement covering %s: %w", t4.Addr(), err)
		}
		res.Routes = res.Routes[:0]
		for _, r := range routes {
			res.Routes = append(res.Routes, fmt.Sprintf("%s-%s/%d", r.StartIP, r.EndIP, r.IPProtocol))
		}
	}

	var src4, src6 netip.Addr
	for _, p := range assigned {
		if p.Addr().Is4() && !src4.IsValid() {
			src4 = p.Addr()
		}
		if p.Addr().Is6() && !src6.IsValid() {
			src6 = p.Addr()
		}
	}
	if po.dsts != "" {
		if err := runProbes(conn, drops, po, *n, src4, src6, &res); err != nil {
			return err
		}
		b, _ := json.Marshal(res)
		fmt.Println(string(b))
		return nil
	}
	type flow struct {
		tag      string
		src, dst netip.AddrPort
	}
	var flows []flow
	if src4.IsValid() {
		flows = append(flows, flow{"good", netip.AddrPortFrom(src4, 40000), t4})
	}
	if src6.IsValid() && t6.IsValid() && covers(routes, t6.Addr()) {
		flows = append(flows, flow{"good6", netip.AddrPortFrom(src6, 40000), t6})
	}
	for i, s := range strings.Split(*spoof, ",") {
		if s == "" {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return err
		}
		dst := t4
		if a.Is6() {
			if !t6.IsValid() || !covers(routes, t6.Addr()) {
				continue
			}
			dst = t6
		}
		flows = append(flows, flow{fmt.Sprintf("spoof-%d", i), netip.AddrPortFrom(a, uint16(40001+i)), dst})
	}
	if len(flows) == 0 || flows[0].tag != "good" {
		return errors.New("no IPv4 address assigned")
	}

	// Interleave the flows so that a rate limit or queue overflow hits all
	// tags alike.
	buf := make([]byte, 0, 1500)
	for seq := range *n {
		for _, f := range flows {
			buf = buildUDP(buf[:0], f.src, f.dst, fmt.Appendf(nil, "%s|%d", f.tag, seq))
			before := drops.n.Load()
			icmp, err := conn.WritePacket(buf)
			if err != nil {
				return fmt.Errorf("write packet %s #%d: %w", f.tag, seq, err)
			}
			if icmp == nil && drops.n.Load() == before {
				res.Sent[f.tag]++
			} else {
				res.Dropped[f.tag]++
			}
			time.Sleep(*interval)
		}
	}
	// Give the last datagrams time to leave before closing the connection.
	time.Sleep(300 * time.Millisecond)
	b, _ := json.Marshal(res)
	fmt.Println(string(b))
	return nil
}

func covers(routes []connectip.IPRoute, a netip.Addr) bool {
	for _, r := range routes {
		if r.StartIP.Is4() == a.Is4() && r.StartIP.Compare(a) <= 0 && a.Compare(r.EndIP) <= 0 {
			return true
		}
	}
	return false
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
