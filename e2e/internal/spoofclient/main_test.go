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
