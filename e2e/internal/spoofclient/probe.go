package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	connectip "github.com/quic-go/connect-ip-go"
)

// Probe mode: spoofclient sends packets from its assigned addresses (no
// spoofing) to each destination of -probe: UDP datagrams, TCP SYNs and
// ICMP echo requests, n of each kind, paced at -pps all together. It reads
// everything the server sends back and counts, per destination, the ICMP
// errors that quote a packet to it (by type/code) and the other packets
// that come from it (replies: UDP, TCP, echo replies). A SYN-ACK is
// answered with an ACK, so that a TCP listener behind the destination
// accepts one connection per SYN: the test can count those hits.

// probeOptions are the flags of probe mode.
type probeOptions struct {
	dsts             string
	kinds            string
	udpPort, tcpPort int
	pps              int
	wait             time.Duration
}

// probeResult is what spoofclient reports for one destination.
type probeResult struct {
	Sent    map[string]int `json:"sent"`    // by kind (udp, tcp, echo), accepted by WritePacket
	ICMP    map[string]int `json:"icmp"`    // ICMP errors quoting a packet to this destination, by "type/code"
	Replies map[string]int `json:"replies"` // packets from this destination, by kind (udp, tcp, echo, other)
}

// echoID is the identifier of the echo requests.
const echoID = 0x4d51

// runProbes sends the probes of po over conn and fills res.
func runProbes(conn *connectip.Conn, drops *dropCounter, po probeOptions, n int, src4, src6 netip.Addr, res *result) error {
	var dsts []netip.Addr
	for _, s := range strings.Split(po.dsts, ",") {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("probe: %w", err)
		}
		if (a.Is4() && !src4.IsValid()) || (a.Is6() && !src6.IsValid()) {
			return fmt.Errorf("probe %s: no address of its family assigned", a)
		}
		dsts = append(dsts, a)
	}
	kinds := strings.Split(po.kinds, ",")
	for _, k := range kinds {
		if k != "udp" && k != "tcp" && k != "echo" {
			return fmt.Errorf("kinds: unknown kind %q", k)
		}
	}
	res.Probes = map[string]*probeResult{}
	for _, d := range dsts {
		res.Probes[d.String()] = &probeResult{Sent: map[string]int{}, ICMP: map[string]int{}, Replies: map[string]int{}}
	}
	res.ICMPFrom = map[string]int{}

	// The reader counts under mu; WritePacket is safe for concurrent use.
	var mu sync.Mutex
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 2048)
		var ack []byte
		for {
			n, err := conn.ReadPacket(buf)
			if err != nil {
				return
			}
			pi, ok := parsePacket(buf[:n])
			mu.Lock()
			switch pr := res.Probes[pi.quotedDst.String()]; {
			case !ok:
				res.Other++
			case pi.icmpErr && pr != nil:
				pr.ICMP[fmt.Sprintf("%d/%d", pi.icmpType, pi.icmpCode)]++
				res.ICMPFrom[pi.src.String()]++
			case !pi.icmpErr && res.Probes[pi.src.String()] != nil:
				res.Probes[pi.src.String()].Replies[replyKind(pi)]++
			default:
				res.Other++
			}
			mu.Unlock()
			if a, ok := ackFor(ack[:0], pi); ok {
				ack = a
				conn.WritePacket(ack)
			}
		}
	}()

	interval := time.Second / time.Duration(max(1, po.pps))
	start := time.Now()
	var i int
	buf := make([]byte, 0, 1500)
	for seq := range n {
		for _, d := range dsts {
			src := src4
			if d.Is6() {
				src = src6
			}
			for _, k := range kinds {
				// Pace against the start, so that sleep granularity does not
				// lower the rate.
				if w := time.Until(start.Add(time.Duration(i) * interval)); w > 0 {
					time.Sleep(w)
				}
				i++
				switch k {
				case "udp":
					buf = buildUDP(buf[:0], netip.AddrPortFrom(src, 40000), netip.AddrPortFrom(d, uint16(po.udpPort)), fmt.Appendf(nil, "probe|%d", seq))
				case "tcp":
					// A source port per SYN: each SYN is a connection of its own.
					buf = buildTCP(buf[:0], netip.AddrPortFrom(src, uint16(41000+seq%20000)), netip.AddrPortFrom(d, uint16(po.tcpPort)), 1000*uint32(seq), 0, tcpSYN)
				case "echo":
					buf = buildEcho(buf[:0], src, d, echoID, uint16(seq))
				}
				before := drops.n.Load()
				icmp, err := conn.WritePacket(buf)
				if err != nil {
					return fmt.Errorf("write %s probe #%d to %s: %w", k, seq, d, err)
				}
				mu.Lock()
				if icmp == nil && drops.n.Load() == before {
					res.Probes[d.String()].Sent[k]++
				} else {
					res.Dropped[d.String()+"/"+k]++
				}
				mu.Unlock()
			}
		}
	}
	time.Sleep(po.wait)
	conn.Close()
	select {
	case <-readDone:
	case <-time.After(5 * time.Second):
		return errors.New("packet reader did not stop after close")
	}
	return nil
}

// replyKind names a packet that is not an ICMP error.
func replyKind(pi packetInfo) string {
	switch {
	case pi.proto == protoUDP:
		return "udp"
	case pi.proto == protoTCP:
		return "tcp"
	case (pi.proto == protoICMP && len(pi.l4) > 0 && pi.l4[0] == 0) || (pi.proto == protoICMPv6 && len(pi.l4) > 0 && pi.l4[0] == 129):
		return "echo"
	}
	return "other"
}

// ackFor appends to b the ACK that completes the handshake of which pi is
// the SYN-ACK; ok is false if pi is no SYN-ACK.
func ackFor(b []byte, pi packetInfo) ([]byte, bool) {
	if pi.proto != protoTCP || len(pi.l4) < 20 || pi.l4[13]&(tcpSYN|tcpACK) != tcpSYN|tcpACK {
		return b, false
	}
	t := pi.l4
	from := netip.AddrPortFrom(pi.dst, binary.BigEndian.Uint16(t[2:]))
	to := netip.AddrPortFrom(pi.src, binary.BigEndian.Uint16(t[0:]))
	seq := binary.BigEndian.Uint32(t[8:])     // their acknowledgment number
	ack := binary.BigEndian.Uint32(t[4:]) + 1 // their sequence number, plus the SYN
	return buildTCP(b, from, to, seq, ack, tcpACK), true
}
