package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("%s is not a PEM certificate", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

func wantMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s mode = %#o, want %#o", filepath.Base(path), got, want)
	}
}

func TestGenerateCerts(t *testing.T) {
	for _, host := range []string{"vpn.example.com", "198.18.0.1", "2001:db8::1"} {
		t.Run(host, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pki")
			var out bytes.Buffer
			if err := generateCerts(&out, dir, host, []string{"alice", "bob@example.com"}, 30*24*time.Hour); err != nil {
				t.Fatalf("generateCerts = %v", err)
			}
			for _, name := range []string{"ca", "server", "alice", "bob@example.com"} {
				wantMode(t, filepath.Join(dir, name+".key"), 0o600)
				wantMode(t, filepath.Join(dir, name+".crt"), 0o644)
				// Every pair loads as a TLS key pair.
				if _, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")); err != nil {
					t.Errorf("%s key pair: %v", name, err)
				}
			}
			if matches, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(matches) != 0 {
				t.Errorf("temporary files left: %v", matches)
			}
			if !strings.Contains(out.String(), filepath.Join(dir, "server.crt")) || !strings.Contains(out.String(), filepath.Join(dir, "alice.crt")) {
				t.Errorf("output %q does not name the files written", out.String())
			}

			ca := readCert(t, filepath.Join(dir, "ca.crt"))
			if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
				t.Error("ca.crt is not a CA certificate")
			}
			roots := x509.NewCertPool()
			roots.AddCert(ca)

			srv := readCert(t, filepath.Join(dir, "server.crt"))
			if _, err := srv.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				t.Errorf("server certificate does not verify for %s: %v", host, err)
			}
			if _, err := srv.Verify(x509.VerifyOptions{DNSName: "other.example", Roots: roots}); err == nil {
				t.Error("server certificate verifies for another host")
			}
			if len(srv.IPAddresses)+len(srv.DNSNames) != 1 {
				t.Errorf("server SANs = %v %v, want just %s", srv.IPAddresses, srv.DNSNames, host)
			}
			if srv.IsCA {
				t.Error("server certificate is a CA")
			}
			if d := time.Until(srv.NotAfter); d < 29*24*time.Hour || d > 31*24*time.Hour {
				t.Errorf("server certificate valid for %v more, want about 30 days", d.Round(time.Hour))
			}

			for _, name := range []string{"alice", "bob@example.com"} {
				c := readCert(t, filepath.Join(dir, name+".crt"))
				if c.Subject.CommonName != name {
					t.Errorf("client CN = %q, want %q", c.Subject.CommonName, name)
				}
				if !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
					t.Errorf("client %s EKU = %v, want ClientAuth", name, c.ExtKeyUsage)
				}
				if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
					t.Errorf("client %s certificate does not verify: %v", name, err)
				}
				if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
					t.Errorf("client %s certificate verifies as a server", name)
				}
			}
		})
	}
}

func TestGenerateCertsReusesCA(t *testing.T) {
	dir := t.TempDir()
	if err := generateCerts(&bytes.Buffer{}, dir, "vpn.example.com", []string{"alice"}, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	caKeyPEM, _ := os.ReadFile(filepath.Join(dir, "ca.key"))
	alice := readCert(t, filepath.Join(dir, "alice.crt"))

	if err := generateCerts(&bytes.Buffer{}, dir, "vpn.example.com", []string{"bob"}, 24*time.Hour); err != nil {
		t.Fatalf("second generateCerts = %v", err)
	}
	caPEM2, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	caKeyPEM2, _ := os.ReadFile(filepath.Join(dir, "ca.key"))
	if !bytes.Equal(caPEM, caPEM2) || !bytes.Equal(caKeyPEM, caKeyPEM2) {
		t.Fatal("second call replaced the CA")
	}
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, filepath.Join(dir, "ca.crt")))
	opts := x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	for name, c := range map[string]*x509.Certificate{"alice (first run)": alice, "bob (second run)": readCert(t, filepath.Join(dir, "bob.crt"))} {
		if _, err := c.Verify(opts); err != nil {
			t.Errorf("%s does not verify against the CA: %v", name, err)
		}
	}
	// The CA key on disk is the one that signed.
	caKey := func() *ecdsa.PrivateKey {
		blk, _ := pem.Decode(caKeyPEM2)
		k, err := x509.ParseECPrivateKey(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}()
	ca := readCert(t, filepath.Join(dir, "ca.crt"))
	if !caKey.PublicKey.Equal(ca.PublicKey) {
		t.Error("ca.key does not match ca.crt")
	}
}

func TestGenerateCertsKeepsCAWithoutKey(t *testing.T) {
	dir := t.TempDir()
	if err := generateCerts(&bytes.Buffer{}, dir, "vpn.example.com", nil, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err := generateCerts(&bytes.Buffer{}, dir, "vpn.example.com", []string{"c"}, 24*time.Hour); err == nil {
		t.Fatal("generateCerts with ca.crt but no ca.key = nil error, want a refusal")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "ca.crt")); !bytes.Equal(b, caPEM) {
		t.Error("generateCerts replaced a CA whose key is missing")
	}
}

func TestGenerateCertsCorruptCA(t *testing.T) {
	dir := t.TempDir()
	if err := generateCerts(&bytes.Buffer{}, dir, "vpn.example.com", nil, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.key"), []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err := generateCerts(&bytes.Buffer{}, dir, "vpn.example.com", nil, 24*time.Hour); err == nil {
		t.Fatal("generateCerts with a corrupt ca.key = nil error")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "ca.crt")); !bytes.Equal(b, caPEM) {
		t.Error("generateCerts replaced a CA whose key it could not read")
	}
}
