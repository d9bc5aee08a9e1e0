package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/masque-vpn/masque/policy"
	"github.com/pelletier/go-toml/v2"
)

// TestInviteToken: a token invite appends a fresh token for NAME to the
// tokens file and writes a 0600 profile that names the servers, pins the
// CA and carries the same token.
func TestInviteToken(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	if err := generateCerts(&out, dir, "vpn.example.com", nil, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("alice 0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o := inviteOptions{servers: []string{"vpn.example.com:443", "vpn2.example.com:443"}, ca: filepath.Join(dir, "ca.crt"), tokens: tokens,
		out: filepath.Join(dir, "laptop.conf"), extra: []string{`route=["10.0.0.0/8"]`}}
	out.Reset()
	if err := o.run(&out, "laptop"); err != nil {
		t.Fatalf("invite = %v", err)
	}
	fi, err := os.Stat(o.out)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("profile %v, %v; want mode 0600", fi, err)
	}
	b, _ := os.ReadFile(o.out)
	var p map[string]any
	if err := toml.Unmarshal(b, &p); err != nil {
		t.Fatalf("the profile is not TOML: %v\n%s", err, b)
	}
	ca, _ := os.ReadFile(o.ca)
	if p["ca-pem"] != string(ca) {
		t.Errorf("ca-pem = %q, want the CA file", p["ca-pem"])
	}
	if s, _ := p["server"].([]any); len(s) != 2 || s[0] != "vpn.example.com:443" {
		t.Errorf("server = %v", p["server"])
	}
	if r, _ := p["route"].([]any); len(r) != 1 || r[0] != "10.0.0.0/8" {
		t.Errorf("route = %v", p["route"])
	}
	tok, _ := p["token"].(string)
	ts, err := policy.LoadTokens(tokens)
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := ts.Lookup(tok); !ok || id != "laptop" {
		t.Errorf("the profile's token is identity %q (%v) in the tokens file, want laptop", id, ok)
	}
	if !strings.Contains(out.String(), "reload masqued") {
		t.Errorf("output does not say to reload masqued:\n%s", out.String())
	}
	// An existing profile is not replaced, and no token is added then.
	before, _ := os.ReadFile(tokens)
	if err := o.run(&out, "laptop"); err == nil || !strings.Contains(err.Error(), "an existing profile is not replaced") {
		t.Errorf("second invite = %v", err)
	}
	if after, _ := os.ReadFile(tokens); !bytes.Equal(before, after) {
		t.Error("a refused invite changed the tokens file")
	}
}

// TestInviteCert: a certificate invite issues a client certificate for
// NAME from the CA, puts it and its key in the profile, and keeps no copy
// of the key.
func TestInviteCert(t *testing.T) {
	dir := t.TempDir()
	if err := generateCerts(&bytes.Buffer{}, dir, "198.18.1.2", nil, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	o := inviteOptions{servers: []string{"198.18.1.2:4433"}, certDir: dir, days: 30, out: filepath.Join(t.TempDir(), "phone.conf")}
	if err := o.run(&bytes.Buffer{}, "phone"); err != nil {
		t.Fatalf("invite = %v", err)
	}
	b, _ := os.ReadFile(o.out)
	var doc map[string]any
	if err := toml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("the profile is not TOML: %v\n%s", err, b)
	}
	p := map[string]string{}
	for k, v := range doc {
		if s, ok := v.(string); ok {
			p[k] = s
		}
	}
	kp, err := tls.X509KeyPair([]byte(p["cert-pem"]), []byte(p["key-pem"]))
	if err != nil {
		t.Fatalf("cert-pem and key-pem: %v", err)
	}
	leaf, _ := x509.ParseCertificate(kp.Certificate[0])
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(p["ca-pem"]))
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil || leaf.Subject.CommonName != "phone" {
		t.Errorf("client certificate %q does not verify against the pinned CA: %v", leaf.Subject.CommonName, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "phone.key")); !os.IsNotExist(err) {
		t.Errorf("the client key stayed in the CA directory: %v", err)
	}
	if blk, _ := pem.Decode([]byte(p["key-pem"])); blk == nil {
		t.Error("key-pem is not PEM")
	}
}

// TestInviteErrors: every problem at once.
func TestInviteErrors(t *testing.T) {
	o := inviteOptions{servers: []string{"nohost"}, extra: []string{"novalue"}}
	err := o.run(&bytes.Buffer{}, "ca")
	for _, want := range []string{`name "ca"`, `--server "nohost": want HOST:PORT`, "give --tokens (a token) or --cert-dir", "--ca is required", `--set "novalue": want KEY=VALUE`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("invite error %v lacks %q", err, want)
		}
	}
}
