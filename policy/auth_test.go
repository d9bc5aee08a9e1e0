package policy

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"strings"
	"testing"
)

func chains(cn string) [][]*x509.Certificate {
	leaf := &x509.Certificate{Subject: pkix.Name{CommonName: cn}}
	ca := &x509.Certificate{Subject: pkix.Name{CommonName: "ca"}}
	return [][]*x509.Certificate{{leaf, ca}}
}

func testTokens(t testing.TB) *Tokens {
	toks, err := ParseTokens(strings.NewReader("alice " + tokA + "\nbob " + tokB + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	return toks
}

func TestAuthenticate(t *testing.T) {
	toks := testTokens(t)
	both := &Authenticator{Tokens: toks, ClientCerts: true}
	tokensOnly := &Authenticator{Tokens: toks}
	certsOnly := &Authenticator{ClientCerts: true}
	tests := []struct {
		name    string
		a       *Authenticator
		header  string
		chains  [][]*x509.Certificate
		want    Identity
		wantErr error
	}{
		{name: "bearer", a: both, header: "Bearer " + tokA, want: "alice"},
		{name: "bearer lower case", a: both, header: "bearer " + tokB, want: "bob"},
		{name: "bearer mixed case", a: both, header: "BeArEr " + tokA, want: "alice"},
		{name: "surrounding OWS", a: both, header: " \tBearer " + tokA + " ", want: "alice"},
		{name: "bearer beats cert", a: both, header: "Bearer " + tokB, chains: chains("carol"), want: "bob"},
		{name: "bad bearer beats cert", a: both, header: "Bearer " + tokC, chains: chains("carol"), wantErr: ErrBadToken},
		{name: "unknown token", a: tokensOnly, header: "Bearer " + tokC, wantErr: ErrBadToken},
		{name: "short unknown token", a: tokensOnly, header: "Bearer x", wantErr: ErrBadToken},
		{name: "two spaces", a: both, header: "Bearer  " + tokA, wantErr: ErrMalformedAuth},
		{name: "tab separator", a: both, header: "Bearer\t" + tokA, wantErr: ErrMalformedAuth},
		{name: "no token", a: both, header: "Bearer", wantErr: ErrMalformedAuth},
		{name: "no token trailing space", a: both, header: "Bearer ", wantErr: ErrMalformedAuth},
		{name: "no space", a: both, header: "Bearer" + tokA, wantErr: ErrMalformedAuth},
		{name: "token with space", a: both, header: "Bearer " + tokA + " x", wantErr: ErrMalformedAuth},
		{name: "token with control", a: both, header: "Bearer " + tokA + "\x00", wantErr: ErrMalformedAuth},
		{name: "token non-ASCII", a: both, header: "Bearer " + tokA + "é", wantErr: ErrMalformedAuth},
		{name: "basic scheme", a: both, header: "Basic YWxpY2U6cGFzcw==", chains: chains("carol"), wantErr: ErrMalformedAuth},
		{name: "scheme prefix", a: both, header: "Bearerx " + tokA, wantErr: ErrMalformedAuth},
		{name: "non-ASCII scheme", a: both, header: "Bëarer " + tokA, wantErr: ErrMalformedAuth},
		{name: "cert", a: both, chains: chains("carol@example.com"), want: "carol@example.com"},
		{name: "cert only", a: certsOnly, chains: chains("carol"), want: "carol"},
		{name: "header ignored without tokens", a: certsOnly, header: "Bearer " + tokA, chains: chains("carol"), want: "carol"},
		{name: "bearer without tokens", a: certsOnly, header: "Bearer " + tokA, wantErr: ErrNoCredentials},
		{name: "cert not accepted", a: tokensOnly, chains: chains("carol"), wantErr: ErrNoCredentials},
		{name: "empty CN", a: both, chains: chains(""), wantErr: ErrNoCredentials},
		{name: "bad CN", a: both, chains: chains("carol smith"), wantErr: ErrNoCredentials},
		{name: "long CN", a: both, chains: chains(strings.Repeat("c", 65)), wantErr: ErrNoCredentials},
		{name: "empty chain", a: both, chains: [][]*x509.Certificate{{}}, wantErr: ErrNoCredentials},
		{name: "nil leaf", a: both, chains: [][]*x509.Certificate{{nil}}, wantErr: ErrNoCredentials},
		{name: "nothing", a: both, wantErr: ErrNoCredentials},
		{name: "nothing accepted", a: &Authenticator{}, header: "Bearer " + tokA, chains: chains("carol"), wantErr: ErrNoCredentials},
		{name: "nil authenticator", a: nil, header: "Bearer " + tokA, wantErr: ErrNoCredentials},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.a.Authenticate(tt.header, tt.chains)
			if got != tt.want || !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Errorf("Authenticate(%q) = %q, %v, want %q, %v", tt.header, got, err, tt.want, tt.wantErr)
			}
			if err != nil {
				assertNoSecret(t, err, tokA, tokB, tokC)
			}
		})
	}
}

// FuzzAuthenticate checks that Authenticate never panics, returns only the
// three sentinels, returns only valid identities, and maps known tokens to
// their identity.
func FuzzAuthenticate(f *testing.F) {
	f.Add("Bearer "+tokA, "", false, false)
	f.Add("bearer "+tokB, "carol", true, true)
	f.Add("", "carol", true, true)
	f.Add("Basic abc", "", true, false)
	f.Add("Bearer  x", "x y", true, true)
	f.Add("", "", true, true)
	toks := testTokens(f)
	f.Fuzz(func(t *testing.T, header, cn string, useTokens, useCerts bool) {
		a := &Authenticator{ClientCerts: useCerts}
		if useTokens {
			a.Tokens = toks
		}
		var ch [][]*x509.Certificate
		if cn != "" {
			ch = chains(cn)
		}
		id, err := a.Authenticate(header, ch)
		switch {
		case err == nil:
			if !validIdentity(string(id)) {
				t.Fatalf("Authenticate(%q, %q) = invalid identity %q", header, cn, id)
			}
		case errors.Is(err, ErrNoCredentials), errors.Is(err, ErrBadToken), errors.Is(err, ErrMalformedAuth):
			if id != "" {
				t.Fatalf("Authenticate(%q, %q) = %q with error %v", header, cn, id, err)
			}
		default:
			t.Fatalf("Authenticate(%q, %q) = unexpected error %v", header, cn, err)
		}
		if useTokens {
			if tok, ok := parseBearer(strings.Trim(header, " \t")); ok {
				want, known := toks.Lookup(tok)
				if known && (err != nil || id != want) {
					t.Fatalf("Authenticate(%q) = %q, %v, want %q", header, id, err, want)
				}
				if !known && !errors.Is(err, ErrBadToken) {
					t.Fatalf("Authenticate(%q) = %q, %v, want ErrBadToken", header, id, err)
				}
			}
		}
	})
}
