package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/spf13/cobra"
)

var clientNameRE = regexp.MustCompile(`^[A-Za-z0-9._@-]{1,64}$`)

func newCertCmd() *cobra.Command {
	var (
		dir     string
		host    string
		clients []string
		days    int
	)
	cmd := &cobra.Command{
		Use:   "cert --dir DIR --host NAME_OR_IP [--client NAME]...",
		Short: "Generate a CA, a server certificate and client certificates",
		Long: `Generates DIR/ca.crt and ca.key (the CA), DIR/server.crt and server.key for
--host (a DNS name or an IP address), and for each --client NAME a client
certificate DIR/NAME.crt and NAME.key with common name NAME. Alone, such a
certificate authenticates as identity cert:NAME; with a bearer token, the token's
identity must be NAME. An existing CA in DIR is reused, so clients can be added
later. Keys are 0600.`,
		Example: `  # A CA and a certificate for the server's name:
  masqued cert --dir /etc/masqued/pki --host vpn.example.com
  # Later, client certificates from the same CA (and a server certificate for an address):
  masqued cert --dir /etc/masqued/pki --host 198.51.100.7 --client alice --client bob`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" || host == "" {
				return usagef("cert: --dir and --host are required")
			}
			for _, c := range clients {
				if !clientNameRE.MatchString(c) || c == "ca" || c == "server" {
					return usagef("cert: client name %q: want 1-64 of [A-Za-z0-9._@-], not ca or server", c)
				}
			}
			if days <= 0 {
				return usagef("cert: --days must be positive")
			}
			return generateCerts(cmd.OutOrStdout(), dir, host, clients, time.Duration(days)*24*time.Hour)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "directory to write certificates and keys to")
	cmd.Flags().StringVar(&host, "host", "", "server DNS name or IP address the certificate is for")
	cmd.Flags().StringArrayVar(&clients, "client", nil, "client identity to issue a certificate for (repeatable)")
	cmd.Flags().IntVar(&days, "days", 825, "validity of the server and client certificates in days")
	return cmd
}

type printer interface{ Write([]byte) (int, error) }

func generateCerts(out printer, dir, host string, clients []string, validity time.Duration) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("cert: %w", err)
	}
	caCert, caKey, err := loadOrCreateCA(dir)
	if err != nil {
		return fmt.Errorf("cert: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: host},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host}
	}
	if err := issue(dir, "server", tmpl, caCert, caKey, validity); err != nil {
		return fmt.Errorf("cert: %w", err)
	}
	fmt.Fprintf(out, "wrote %s, %s\n", filepath.Join(dir, "ca.crt"), filepath.Join(dir, "server.crt"))
	for _, c := range clients {
		tmpl := &x509.Certificate{
			Subject:     pkix.Name{CommonName: c},
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		if err := issue(dir, c, tmpl, caCert, caKey, validity); err != nil {
			return fmt.Errorf("cert: client %s: %w", c, err)
		}
		fmt.Fprintf(out, "wrote %s\n", filepath.Join(dir, c+".crt"))
	}
	return nil
}

func loadOrCreateCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	crtPath, keyPath := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	crtPEM, err1 := os.ReadFile(crtPath)
	keyPEM, err2 := os.ReadFile(keyPath)
	if err1 == nil && err2 == nil {
		cb, _ := pem.Decode(crtPEM)
		kb, _ := pem.Decode(keyPEM)
		if cb == nil || kb == nil {
			return nil, nil, fmt.Errorf("%s or %s is not PEM", crtPath, keyPath)
		}
		crt, err := x509.ParseCertificate(cb.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", crtPath, err)
		}
		key, err := x509.ParseECPrivateKey(kb.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
		}
		return crt, key, nil
	}
	if err1 == nil || !errors.Is(err1, fs.ErrNotExist) {
		// ca.crt exists (or is unreadable) without a usable ca.key: making a
		// new CA would silently invalidate every certificate it issued.
		if err1 == nil {
			return nil, nil, fmt.Errorf("%s exists but %s cannot be read (%v): restore the CA key, or use an empty directory for a new CA", crtPath, keyPath, err2)
		}
		return nil, nil, err1
	}
	if err2 == nil {
		return nil, nil, fmt.Errorf("%s exists without %s: restore the CA certificate, or use an empty directory for a new CA", keyPath, crtPath)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "masque CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	crt, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	if err := writePEM(keyPath, "EC PRIVATE KEY", mustMarshalEC(key), 0o600); err != nil {
		return nil, nil, err
	}
	if err := writePEM(crtPath, "CERTIFICATE", der, 0o644); err != nil {
		return nil, nil, err
	}
	return crt, key, nil
}

func issue(dir, name string, tmpl, ca *x509.Certificate, caKey *ecdsa.PrivateKey, validity time.Duration) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl.SerialNumber = serial()
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(validity)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, name+".key"), "EC PRIVATE KEY", mustMarshalEC(key), 0o600); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, name+".crt"), "CERTIFICATE", der, 0o644)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n
}

func mustMarshalEC(k *ecdsa.PrivateKey) []byte {
	b, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		panic(err) // a freshly generated P-256 key always marshals
	}
	return b
}

// writePEM writes one PEM block to path with mode perm, replacing any file.
func writePEM(path, typ string, der []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err := pem.Encode(f, &pem.Block{Type: typ, Bytes: der}); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
