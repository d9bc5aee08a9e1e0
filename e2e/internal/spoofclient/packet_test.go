package main

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// TestBuildUDP checks the hand-built headers: lengths, and that the IPv4
// header checksum and the UDP checksum (over the pseudo-header) verify, as
// the receiving kernel does.
func TestBuildUDP(t *testing.T) {
	tests := []struct {
		name     string
		src, dst string
	}{
		{"ipv4", "100.64.0.2:40000", "198.18.2.2:9200"},
		{"ipv6", "[fd6d:6173:7175:6500::2]:40000", "[2001:db8:2::2]:9200"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, data := range [][]byte{nil, []byte("x"), []byte("good|17")} {
				src, dst := netip.MustParseAddrPort(tt.src), netip.MustParseAddrPort(tt.dst)
				p := buildUDP(nil, src, dst, data)
				var hdr int
				var pseudo []byte
				if src.Addr().Is4() {
					hdr = 20
					if got := checksum(p[:20]); got != 0 {
						t.Errorf("IPv4 header checksum does not verify: %#04x", got)
					}
					if got := int(binary.BigEndian.Uint16(p[2:])); got != len(p) {
						t.Errorf("IPv4 total length = %d, want %d", got, len(p))
					}
					pseudo = append(append(pseudo, p[12:20]...), 0, 17, p[hdr+4], p[hdr+5])
				} else {
					hdr = 40
					if got := int(binary.BigEndian.Uint16(p[4:])); got != len(p)-40 {
						t.Errorf("IPv6 payload length = %d, want %d", got, len(p)-40)
					}
					pseudo = append(append(pseudo, p[8:40]...), 0, 0, p[hdr+4], p[hdr+5], 0, 0, 0, 17)
				}
				if got := int(binary.BigEndian.Uint16(p[hdr+4:])); got != 8+len(data) {
					t.Errorf("UDP length = %d, want %d", got, 8+len(data))
				}
				if got := checksum(append(pseudo, p[hdr:]...)); got != 0 {
					t.Errorf("UDP checksum of %q does not verify: %#04x", data, got)
				}
				if string(p[hdr+8:]) != string(data) {
					t.Errorf("payload = %q, want %q", p[hdr+8:], data)
				}
			}
		})
	}
}

// verifyL4 checks the IP header and the upper-layer checksum of p as the
// receiving kernel does, and returns the upper-layer message.
func verifyL4(t *testing.T, p []byte) []byte {
	t.Helper()
	pi, ok := parsePacket(p)
	if !ok {
		t.Fatalf("parsePacket(% x) failed", p)
	}
	var pseudo []byte
	if pi.src.Is4() {
		if got := checksum(p[:20]); got != 0 {
			t.Errorf("IPv4 header checksum does not verify: %#04x", got)
		}
		if got := int(binary.BigEndian.Uint16(p[2:])); got != len(p) {
			t.Errorf("IPv4 total length = %d, want %d", got, len(p))
		}
		if pi.proto != protoICMP {
			pseudo = append(append(pseudo, p[12:20]...), 0, pi.proto)
			pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(pi.l4)))
		}
	} else {
		if got := int(binary.BigEndian.Uint16(p[4:])); got != len(p)-40 {
			t.Errorf("IPv6 payload length = %d, want %d", got, len(p)-40)
		}
		pseudo = append(append(pseudo, p[8:40]...), 0, 0)
		pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(pi.l4)))
		pseudo = append(pseudo, 0, 0, 0, pi.proto)
	}
	if got := checksum(append(pseudo, pi.l4...)); got != 0 {
		t.Errorf("protocol %d checksum does not verify: %#04x", pi.proto, got)
	}
	return pi.l4
}

// TestBuildTCPAndEcho checks the SYN, ACK and echo request that probe mode
// sends, and that ackFor answers a SYN-ACK as a TCP stack would.
func TestBuildTCPAndEcho(t *testing.T) {
	for _, tt := range []struct{ name, src, dst string }{
		{"ipv4", "100.64.0.2", "198.18.2.2"},
		{"ipv6", "fd6d:6173:7175:6500::2", "2001:db8:2::2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src, dst := netip.MustParseAddr(tt.src), netip.MustParseAddr(tt.dst)
			syn := buildTCP(nil, netip.AddrPortFrom(src, 41000), netip.AddrPortFrom(dst, 9201), 7000, 0, tcpSYN)
			if l4 := verifyL4(t, syn); l4[13] != tcpSYN || binary.BigEndian.Uint32(l4[4:]) != 7000 || binary.BigEndian.Uint16(l4[2:]) != 9201 {
				t.Errorf("SYN header = % x", l4)
			}
			// The peer's SYN-ACK: seq 555, ack 7001.
			synAck := buildTCP(nil, netip.AddrPortFrom(dst, 9201), netip.AddrPortFrom(src, 41000), 555, 7001, tcpSYN|tcpACK)
			pi, _ := parsePacket(synAck)
			ack, ok := ackFor(nil, pi)
			if !ok {
				t.Fatal("ackFor(SYN-ACK) = false")
			}
			l4 := verifyL4(t, ack)
			ai, _ := parsePacket(ack)
			if ai.src != src || ai.dst != dst || l4[13] != tcpACK || binary.BigEndian.Uint32(l4[4:]) != 7001 || binary.BigEndian.Uint32(l4[8:]) != 556 ||
				binary.BigEndian.Uint16(l4[0:]) != 41000 || binary.BigEndian.Uint16(l4[2:]) != 9201 {
				t.Errorf("ACK %v > %v header = % x, want seq 7001 ack 556 ports 41000 > 9201", ai.src, ai.dst, l4)
			}
			if _, ok := ackFor(nil, ai); ok {
				t.Error("ackFor(ACK) = true, want false")
			}

			echo := buildEcho(nil, src, dst, echoID, 3)
			l4 = verifyL4(t, echo)
			wantType := uint8(8)
			if src.Is6() {
				wantType = 128
			}
			if l4[0] != wantType || binary.BigEndian.Uint16(l4[4:]) != echoID || binary.BigEndian.Uint16(l4[6:]) != 3 {
				t.Errorf("echo request = % x", l4)
			}
		})
	}
}

// TestParseICMPError checks that an ICMP error names the destination of the
// packet it quotes, and that other packets are not taken for errors.
func TestParseICMPError(t *testing.T) {
	for _, tt := range []struct {
		name         string
		gw, src, dst string
		typ, code    uint8
	}{
		{"ipv4 admin prohibited", "100.64.0.1", "100.64.0.2", "127.0.0.1", 3, 13},
		{"ipv6 admin prohibited", "fd6d:6173:7175:6500::1", "fd6d:6173:7175:6500::2", "::1", 1, 1},
		{"ipv4 time exceeded", "100.64.0.1", "100.64.0.2", "198.18.2.2", 11, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			gw, src, dst := netip.MustParseAddr(tt.gw), netip.MustParseAddr(tt.src), netip.MustParseAddr(tt.dst)
			invoking := buildUDP(nil, netip.AddrPortFrom(src, 40000), netip.AddrPortFrom(dst, 9200), []byte("probe|1"))
			m := append([]byte{tt.typ, tt.code, 0, 0, 0, 0, 0, 0}, invoking...)
			proto := uint8(protoICMP)
			if gw.Is6() {
				proto = protoICMPv6
			}
			pi, ok := parsePacket(buildIP(nil, gw, src, proto, m))
			if !ok || !pi.icmpErr || pi.icmpType != tt.typ || pi.icmpCode != tt.code || pi.quotedDst != dst || pi.src != gw {
				t.Errorf("parsePacket = %+v, %v; want ICMP error %d/%d from %v quoting a packet to %v", pi, ok, tt.typ, tt.code, gw, dst)
			}
		})
	}
	pi, ok := parsePacket(buildEcho(nil, netip.MustParseAddr("198.18.2.2"), netip.MustParseAddr("100.64.0.2"), echoID, 1))
	if !ok || pi.icmpErr {
		t.Errorf("parsePacket(echo) = %+v, %v; want no ICMP error", pi, ok)
	}
}
