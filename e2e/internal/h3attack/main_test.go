package main

import (
	"bytes"
	"net/netip"
	"testing"
)

func TestAppendPrefixInt(t *testing.T) {
	tests := []struct {
		name  string
		first byte
		n     uint8
		v     uint64
		want  []byte
	}{
		{"set capacity 4096", 0x20, 5, 4096, []byte{0x3f, 0xe1, 0x1f}},
		{"fits the prefix", 0x20, 5, 30, []byte{0x3e}},
		{"prefix full", 0x00, 6, 63, []byte{0x3f, 0x00}},
		{"RFC 7541 C.1.2", 0x00, 5, 1337, []byte{0x1f, 0x9a, 0x0a}},
		{"section ack of stream 0", 0x80, 7, 0, []byte{0x80}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := appendPrefixInt(nil, tt.first, tt.n, tt.v); !bytes.Equal(got, tt.want) {
				t.Errorf("appendPrefixInt(%#x, %d, %d) = %x, want %x", tt.first, tt.n, tt.v, got, tt.want)
			}
		})
	}
}

func TestAddressesRoundTrip(t *testing.T) {
	in := []addressEntry{
		{reqID: 1, prefix: netip.MustParsePrefix("100.64.0.2/32")},
		{reqID: 300, prefix: netip.MustParsePrefix("fd00::/64")},
	}
	b := appendAddresses(nil, capsuleAddressAssign, in)
	// Type 0x01 and a one-byte length.
	if b[0] != capsuleAddressAssign || int(b[1]) != len(b)-2 {
		t.Fatalf("capsule header %x for %d bytes", b[:2], len(b))
	}
	got, err := parseAddresses(b[2:])
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(in) || got[0] != in[0] || got[1] != in[1] {
		t.Errorf("parseAddresses(appendAddresses(%v)) = %v", in, got)
	}
}

func TestEchoRequestChecksums(t *testing.T) {
	p := echoRequest(netip.MustParseAddr("100.64.0.2"), netip.MustParseAddr("198.18.2.2"), 0x4d51, 7)
	if c := checksum(p[:20]); c != 0 {
		t.Errorf("IPv4 header checksum does not verify: %#x", c)
	}
	if c := checksum(p[20:]); c != 0 {
		t.Errorf("ICMP checksum does not verify: %#x", c)
	}
}
