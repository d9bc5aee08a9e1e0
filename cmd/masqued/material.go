package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"

	"github.com/masque-vpn/masque/policy"
	"github.com/masque-vpn/masque/tunnel"
	"github.com/quic-go/quic-go/http3"
)

// material is what the settings name on disk, loaded and checked.
type material struct {
	tls   *tls.Config
	auth  *policy.Authenticator
	names []string // the server certificate's DNS and IP subject alternative names
}

func loadServerMaterial(s *settings) (*material, error) {
	cert, err := tls.LoadX509KeyPair(s.Cert, s.Key)
	if err != nil {
		return nil, fmt.Errorf("certificate %s / key %s: %w", s.Cert, s.Key, err)
	}
	tc := &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{http3.NextProtoH3},
		MinVersion:   tls.VersionTLS13,
	}
	auth := &policy.Authenticator{}
	if s.ClientCA != "" {
		pemBytes, err := os.ReadFile(s.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("client CA %s: no PEM certificate", s.ClientCA)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.VerifyClientCertIfGiven
		auth.ClientCerts = true
	}
	if s.Tokens != "" {
		toks, err := policy.LoadTokens(s.Tokens)
		if err != nil {
			return nil, err
		}
		if toks.Len() == 0 && s.ClientCA == "" {
			return nil, fmt.Errorf("tokens file %s: no tokens, and no client CA: no client could authenticate", s.Tokens)
		}
		auth.Tokens = toks
	}
	return &material{tls: tc, auth: auth, names: certNames(cert.Leaf)}, nil
}

// certNames returns the DNS names and IP addresses of leaf's subject
// alternative names that can name this server in a request's :authority
// (see tunnel.ValidServerName); TLS clients check the same names.
func certNames(leaf *x509.Certificate) []string {
	if leaf == nil {
		return nil
	}
	var out []string
	for _, n := range leaf.DNSNames {
		if tunnel.ValidServerName(n) {
			out = append(out, n)
		}
	}
	for _, ip := range leaf.IPAddresses {
		if a, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, a.Unmap().String())
		}
	}
	return out
}

// tokensModeOpen returns the permission bits of the tokens file at path and
// whether group or others have any of them: whoever can read the file can
// connect as any identity in it. A file that cannot be stat'ed is not
// open (loading it reports why).
//
// masqued warns about such a file rather than refusing it: refusing would
// stop servers that run today with a 0644 tokens file at their next
// restart.
func tokensModeOpen(path string) (fs.FileMode, bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, false
	}
	perm := fi.Mode().Perm()
	return perm, perm&0o077 != 0
}

// warnOpenTokens logs, at WARN, a tokens file that group or others may
// access; masqued starts anyway.
func warnOpenTokens(logger *slog.Logger, path string) {
	if perm, open := tokensModeOpen(path); open {
		logger.Warn("tokens file is accessible to group or others: chmod 600 it (masqued starts anyway: refusing would break existing deployments)",
			"path", path, "mode", fmt.Sprintf("%04o", perm))
	}
}
