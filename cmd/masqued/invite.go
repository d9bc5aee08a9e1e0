package main

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/masque-vpn/masque/policy"
	"github.com/mdp/qrterminal/v3"
	"github.com/spf13/cobra"
)

// inviteOptions are the flags of masqued invite.
type inviteOptions struct {
	servers    []string
	serverName string
	ca         string
	tokens     string
	certDir    string
	out        string
	days       int
	qr         bool
	extra      []string // route, kill-switch and the like, KEY=VALUE
}

func newInviteCmd() *cobra.Command {
	var o inviteOptions
	cmd := &cobra.Command{
		Use:   "invite NAME --server HOST:PORT (--tokens FILE --ca FILE | --cert-dir DIR)",
		Short: "Write a ready client profile for NAME: servers, the pinned CA, a fresh token or certificate",
		Long: `Writes NAME.conf (mode 0600), a masque profile that needs no other flag:
	masque up --config NAME.conf          or, installed as /etc/masque/NAME.conf,
	masque up NAME    /    systemctl enable --now masque@NAME

It names the servers (--server, repeatable: the client fails over between
them), pins the CA that signed their certificate, and authenticates NAME:
  --tokens FILE   adds a fresh random token for identity NAME to masqued's tokens
                  file (created 0600 if missing); reload masqued (SIGHUP) to take it
  --cert-dir DIR  issues a client certificate for NAME from the CA in DIR (as
                  masqued cert does) and puts it and its key in the profile
The profile holds a secret: hand it over as you would a password.`,
		Example: `  masqued invite laptop --server vpn.example.com:443 --tokens /etc/masqued/tokens --ca /etc/masqued/ca.crt
  masqued invite phone --server 203.0.113.7:443 --server-name vpn.example.com --cert-dir /etc/masqued/pki --qr
  masqued invite work --server vpn.example.com:443 --cert-dir pki --set 'route=["10.0.0.0/8"]'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.OutOrStdout(), args[0])
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.servers, "server", nil, "server HOST:PORT the client dials (repeatable, in order of preference)")
	f.StringVar(&o.serverName, "server-name", "", "TLS name of the servers' certificate, when --server is an address")
	f.StringVar(&o.ca, "ca", "", "the CA certificate that signed the servers' (default with --cert-dir: DIR/ca.crt)")
	f.StringVar(&o.tokens, "tokens", "", "masqued's tokens file: a fresh token for NAME is added to it")
	f.StringVar(&o.certDir, "cert-dir", "", "directory of the CA (ca.crt, ca.key): a client certificate for NAME is issued from it")
	f.StringVar(&o.out, "out", "", "where to write the profile (default ./NAME.conf)")
	f.IntVar(&o.days, "days", 825, "validity of the client certificate in days (--cert-dir)")
	f.BoolVar(&o.qr, "qr", false, "also print the profile as a QR code on the terminal")
	f.StringArrayVar(&o.extra, "set", nil, "another profile key, KEY=VALUE in TOML (repeatable), e.g. 'route=[\"10.0.0.0/8\"]'")
	return cmd
}

func (o *inviteOptions) run(out io.Writer, name string) error {
	var errs []error
	if !clientNameRE.MatchString(name) || name == "ca" || name == "server" {
		errs = append(errs, fmt.Errorf("invite: name %q: want 1-64 of [A-Za-z0-9._@-], not ca or server", name))
	}
	if len(o.servers) == 0 {
		errs = append(errs, errors.New("invite: --server is required"))
	}
	for _, s := range o.servers {
		if host, port, err := net.SplitHostPort(s); err != nil || host == "" || port == "" {
			errs = append(errs, fmt.Errorf("invite: --server %q: want HOST:PORT", s))
		}
	}
	if (o.tokens == "") == (o.certDir == "") {
		errs = append(errs, errors.New("invite: give --tokens (a token) or --cert-dir (a certificate)"))
	}
	if o.ca == "" && o.certDir != "" {
		o.ca = filepath.Join(o.certDir, "ca.crt")
	}
	if o.ca == "" {
		errs = append(errs, errors.New("invite: --ca is required with --tokens"))
	}
	for _, kv := range o.extra {
		if k, _, ok := strings.Cut(kv, "="); !ok || strings.TrimSpace(k) == "" {
			errs = append(errs, fmt.Errorf("invite: --set %q: want KEY=VALUE", kv))
		}
	}
	if len(errs) > 0 {
		return usageError{errors.Join(errs...)}
	}
	caPEM, err := os.ReadFile(o.ca)
	if err != nil {
		return usagef("invite: --ca: %v", err)
	}
	if o.out == "" {
		o.out = name + ".conf"
	}
	// The profile first: a file that cannot be written leaves no token
	// or certificate behind.
	f, err := os.OpenFile(o.out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("invite: %v (an existing profile is not replaced)", err)
	}
	defer f.Close()
	var auth []string
	var done string
	if o.tokens != "" {
		tok, err := addToken(o.tokens, name)
		if err != nil {
			os.Remove(o.out)
			return err
		}
		auth = append(auth, "token = "+strconv.Quote(tok))
		done = fmt.Sprintf("added a token for %s to %s: reload masqued (kill -HUP) to take it", name, o.tokens)
	} else {
		crt, key, err := issueClient(o.certDir, name, time.Duration(o.days)*24*time.Hour)
		if err != nil {
			os.Remove(o.out)
			return err
		}
		auth = append(auth, "cert-pem = '''\n"+crt+"'''", "key-pem = '''\n"+key+"'''")
		done = fmt.Sprintf("issued a client certificate for %s (identity cert:%s) from the CA in %s", name, name, o.certDir)
	}
	text := profileText(name, o, string(caPEM), auth)
	if _, err := f.WriteString(text); err != nil {
		os.Remove(o.out)
		return fmt.Errorf("invite: %v", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(o.out)
		return fmt.Errorf("invite: %v", err)
	}
	fmt.Fprintln(out, done)
	fmt.Fprintf(out, "wrote %s (mode 0600, holds a secret). On the client:\n", o.out)
	fmt.Fprintf(out, "  sudo install -m 600 %s /etc/masque/%s.conf && sudo systemctl enable --now masque@%s\n", o.out, name, name)
	fmt.Fprintf(out, "  or: sudo masque up --config %s\n", o.out)
	if o.qr {
		qrterminal.GenerateWithConfig(text, qrterminal.Config{Level: qrterminal.L, Writer: out, HalfBlocks: true,
			BlackChar: qrterminal.BLACK_BLACK, WhiteChar: qrterminal.WHITE_WHITE, BlackWhiteChar: qrterminal.BLACK_WHITE, WhiteBlackChar: qrterminal.WHITE_BLACK, QuietZone: 1})
	}
	return nil
}

// profileText is the client profile: TOML whose keys are masque up's
// flags (cmd/masque/profile.go).
func profileText(name string, o *inviteOptions, caPEM string, auth []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# masque profile %q, written by masqued invite on %s.\n", name, time.Now().UTC().Format(time.DateOnly))
	fmt.Fprintf(&b, "# It holds a secret: keep it mode 0600. Install as /etc/masque/%s.conf.\n", name)
	quoted := make([]string, len(o.servers))
	for i, s := range o.servers {
		quoted[i] = strconv.Quote(s)
	}
	fmt.Fprintf(&b, "server = [%s]\n", strings.Join(quoted, ", "))
	if o.serverName != "" {
		fmt.Fprintf(&b, "server-name = %s\n", strconv.Quote(o.serverName))
	}
	for _, kv := range o.extra {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&b, "%s = %s\n", strings.TrimSpace(k), strings.TrimSpace(v))
	}
	fmt.Fprintf(&b, "ca-pem = '''\n%s'''\n", strings.TrimRight(caPEM, "\n")+"\n")
	for _, a := range auth {
		b.WriteString(a + "\n")
	}
	return b.String()
}

// addToken adds a fresh token for identity name to the tokens file at
// path (created 0600 if missing) and returns it. The file must still
// parse afterwards, as masqued reads it.
func addToken(path, name string) (string, error) {
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("invite: %v", err)
	}
	tok := hex.EncodeToString(raw[:])
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return "", fmt.Errorf("invite: tokens: %v", err)
	}
	_, werr := fmt.Fprintf(f, "%s %s\n", name, tok)
	if err := errors.Join(werr, f.Close()); err != nil {
		return "", fmt.Errorf("invite: tokens: %v", err)
	}
	if _, err := policy.LoadTokens(path); err != nil {
		return "", fmt.Errorf("invite: tokens file %s after adding %s: %v", path, name, err)
	}
	return tok, nil
}

// issueClient issues a client certificate for name from the CA in dir,
// as masqued cert --client does, and returns it and its key as PEM.
func issueClient(dir, name string, validity time.Duration) (crt, key string, err error) {
	if _, err := os.Stat(filepath.Join(dir, "ca.key")); err != nil {
		return "", "", usagef("invite: --cert-dir %s: %v (masqued cert --dir %s creates a CA)", dir, err, dir)
	}
	caCert, caKey, err := loadOrCreateCA(dir)
	if err != nil {
		return "", "", fmt.Errorf("invite: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if err := issue(dir, name, tmpl, caCert, caKey, validity); err != nil {
		return "", "", fmt.Errorf("invite: client %s: %w", name, err)
	}
	c, err1 := os.ReadFile(filepath.Join(dir, name+".crt"))
	k, err2 := os.ReadFile(filepath.Join(dir, name+".key"))
	if err := errors.Join(err1, err2); err != nil {
		return "", "", fmt.Errorf("invite: %w", err)
	}
	// The key leaves in the profile only; the certificate stays, a record.
	if err := os.Remove(filepath.Join(dir, name+".key")); err != nil {
		return "", "", fmt.Errorf("invite: %w", err)
	}
	return string(c), string(k), nil
}
