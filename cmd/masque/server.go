package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/masque-vpn/masque/quicio"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/qlogwriter"
	"github.com/spf13/pflag"
)

// serverOptions are the flags that name a server and the credentials for
// it, shared by masque up and masque udp.
type serverOptions struct {
	servers    []string // --server, in order (masque up fails over between them)
	server     string   // the first of them, once checked; the one dial dials
	serverName string
	ca         string
	tokenFile  string
	cert, key  string
	// A profile's inline credentials (masqued invite writes them): the
	// CA, the token, the client certificate and key, as PEM or text.
	// Keys of a profile only, not flags: a command line is visible to
	// every user in ps.
	caPEM, inlineToken, certPEM, keyPEM string
	qlogDir                             string // --qlog: a qlog file per connection there
	tracer                              func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace
	connectTimeout                      time.Duration
}

func (o *serverOptions) addFlags(f *pflag.FlagSet) {
	f.StringArrayVar(&o.servers, "server", nil, "server HOST:PORT (required; masque up takes several, the same operator's, and fails over between them)")
	f.StringVar(&o.serverName, "server-name", "", "TLS server name to verify (needed when --server is an IP literal and the certificate names a host)")
	f.StringVar(&o.ca, "ca", "", "CA certificate to trust for the server (default: system roots)")
	f.StringVar(&o.tokenFile, "token-file", "", "file holding the bearer token")
	f.StringVar(&o.cert, "cert", "", "client certificate (PEM) for mTLS")
	f.StringVar(&o.key, "key", "", "client private key (PEM) for mTLS")
	f.DurationVar(&o.connectTimeout, "connect-timeout", defaultConnectTimeout, "how long to wait for the server")
	f.StringVar(&o.qlogDir, "qlog", "", "write a qlog file of each QUIC connection into DIR (created 0700), for qvis and the like")
	f.StringVar(&o.caPEM, "ca-pem", "", "the CA certificate itself, PEM (a profile key)")
	f.StringVar(&o.inlineToken, "token", "", "the bearer token itself (a profile key: on a command line every user sees it)")
	f.StringVar(&o.certPEM, "cert-pem", "", "the client certificate itself, PEM (a profile key)")
	f.StringVar(&o.keyPEM, "key-pem", "", "the client key itself, PEM (a profile key)")
	for _, n := range profileOnly {
		f.MarkHidden(n)
	}
}

// profileOnly are the keys a profile may set but a command line may not:
// inline credentials.
var profileOnly = []string{"ca-pem", "token", "cert-pem", "key-pem"}

// secretKeys are the profile keys that hold a secret: a profile with one
// must be readable by root alone.
var secretKeys = []string{"token", "key-pem"}

// check reports what is wrong with the flags themselves and returns the
// :authority requests use for each --server: the server, with
// --server-name as its host if given.
func (o *serverOptions) check() (authorities []string, errs []error) {
	if len(o.servers) == 0 {
		errs = append(errs, errors.New("--server is required"))
	}
	for _, srv := range o.servers {
		host, port, err := net.SplitHostPort(srv)
		if err != nil || host == "" || port == "" {
			errs = append(errs, fmt.Errorf("--server %q: want HOST:PORT", srv))
			continue
		}
		authority := srv
		if o.serverName != "" {
			authority = net.JoinHostPort(o.serverName, port)
		}
		authorities = append(authorities, authority)
	}
	if len(o.servers) > 0 {
		o.server = o.servers[0]
	}
	if (o.cert == "") != (o.key == "") {
		errs = append(errs, errors.New("--cert and --key go together"))
	}
	if (o.certPEM == "") != (o.keyPEM == "") {
		errs = append(errs, errors.New("cert-pem and key-pem go together"))
	}
	if o.ca != "" && o.caPEM != "" {
		errs = append(errs, errors.New("--ca and ca-pem are exclusive"))
	}
	if (o.tokenFile != "" || o.inlineToken != "") && (o.cert != "" || o.certPEM != "") {
		errs = append(errs, errors.New("a token and a client certificate are exclusive"))
	}
	if o.tokenFile != "" && o.inlineToken != "" {
		errs = append(errs, errors.New("--token-file and token are exclusive"))
	}
	if o.cert != "" && o.certPEM != "" {
		errs = append(errs, errors.New("--cert and cert-pem are exclusive"))
	}
	if o.connectTimeout <= 0 {
		errs = append(errs, errors.New("--connect-timeout must be positive"))
	}
	return authorities, errs
}

// credentials loads the files the flags name: the TLS configuration (CA,
// client certificate) and the bearer token. Problems are usage errors:
// the files are the user's input.
func (o *serverOptions) credentials() (*tls.Config, string, error) {
	if o.qlogDir != "" {
		t, err := quicio.QlogTracer(o.qlogDir)
		if err != nil {
			return nil, "", usagef("--qlog: %v", err)
		}
		o.tracer = t
	}
	tc := &tls.Config{NextProtos: []string{http3.NextProtoH3}, MinVersion: tls.VersionTLS13, ServerName: o.serverName}
	if o.ca != "" || o.caPEM != "" {
		b, what := []byte(o.caPEM), "ca-pem"
		if o.ca != "" {
			var err error
			if b, err = os.ReadFile(o.ca); err != nil {
				return nil, "", usagef("--ca: %v", err)
			}
			what = "--ca " + o.ca
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, "", usagef("%s: no PEM certificate", what)
		}
		tc.RootCAs = pool
	}
	switch {
	case o.cert != "":
		kp, err := tls.LoadX509KeyPair(o.cert, o.key)
		if err != nil {
			return nil, "", usagef("--cert/--key: %v", err)
		}
		tc.Certificates = []tls.Certificate{kp}
	case o.certPEM != "":
		kp, err := tls.X509KeyPair([]byte(o.certPEM), []byte(o.keyPEM))
		if err != nil {
			return nil, "", usagef("cert-pem/key-pem: %v", err)
		}
		tc.Certificates = []tls.Certificate{kp}
	}
	token := strings.TrimSpace(o.inlineToken)
	if o.inlineToken != "" && (token == "" || strings.ContainsAny(token, " \t\r\n")) {
		return nil, "", usagef("token: want one token on one line")
	}
	if o.tokenFile != "" {
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return nil, "", usagef("--token-file: %v", err)
		}
		token = strings.TrimSpace(string(b))
		if token == "" || strings.ContainsAny(token, " \t\r\n") {
			return nil, "", usagef("--token-file %s: want one token on one line", o.tokenFile)
		}
	}
	return tc, token, nil
}

// dial connects to the server within --connect-timeout, which also bounds
// the QUIC handshake (quic-go's own default gives up after 5 s), and turns
// a failure into one actionable line.
func (o *serverOptions) dial(ctx context.Context, tc *tls.Config, mark uint32, logger *slog.Logger) (*quicio.ClientConn, error) {
	dctx, cancel := context.WithTimeout(ctx, o.connectTimeout)
	defer cancel()
	qc, err := quicio.Dial(dctx, quicio.DialConfig{
		Addr:       o.server,
		TLSConfig:  tc,
		QUICConfig: &quic.Config{HandshakeIdleTimeout: o.connectTimeout, Tracer: o.tracer},
		FwMark:     mark,
		Logger:     logger,
	})
	if err != nil {
		return nil, dialError(o.server, o.connectTimeout, err)
	}
	return qc, nil
}
