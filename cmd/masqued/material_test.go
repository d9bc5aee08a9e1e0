package main

import (
	"crypto/x509"
	"net"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCertNames(t *testing.T) {
	leaf := &x509.Certificate{
		DNSNames:    []string{"vpn.example", "*.pool.example", "not a name", "a.*.example"},
		IPAddresses: []net.IP{net.IPv4(198, 18, 0, 1), net.ParseIP("2001:db8::1")},
	}
	want := []string{"vpn.example", "*.pool.example", "198.18.0.1", "2001:db8::1"}
	if diff := cmp.Diff(want, certNames(leaf)); diff != "" {
		t.Errorf("certNames mismatch (-want +got):\n%s", diff)
	}
	if got := certNames(nil); got != nil {
		t.Errorf("certNames(nil) = %v, want nil", got)
	}
}
