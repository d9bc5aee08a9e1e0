package policy

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"slices"
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
	one := func(h string) []string { return []string{h} }
	tests := []struct {
		name    string
		a       *Authenticator
		header  []string // the Authorization field values
		chains  [][]*x509.Certificate
		want    Identity
		wantErr error
	}{
		{name: "bearer", a: both, header: one("Bearer " + tokA), want: "alice"},
		{name: "bearer lower case", a: both, header: one("bearer " + tokB), want: "bob"},
		{name: "bearer mixed case", a: both, header: one("BeArEr " + tokA), want: "alice"},
		{name: "surrounding OWS", a: both, header: one(" \tBearer " + tokA + " "), want: "alice"},
		{name: "empty field", a: both, header: one(""), wantErr: ErrNoCredentials},
		{name: "empty field and cert", a: both, header: one(" "), chains: chains("carol"), want: "cert:carol"},
		{name: "unknown token", a: tokensOnly, header: one("Bearer " + tokC), wantErr: ErrBadToken},
		{name: "short unknown token", a: tokensOnly, header: one("Bearer x"), wantErr: ErrBadToken},
		{name: "two spaces", a: both, header: one("Bearer  " + tokA), wantErr: ErrMalformedAuth},
		{name: "tab separator", a: both, header: one("Bearer\t" + tokA), wantErr: ErrMalformedAuth},
		{name: "no token", a: both, header: one("Bearer"), wantErr: ErrMalformedAuth},
		{name: "no token trailing space", a: both, header: one("Bearer "), wantErr: ErrMalformedAuth},
		{name: "no space", a: both, header: one("Bearer" + tokA), wantErr: ErrMalformedAuth},
		{name: "token with space", a: both, header: one("Bearer " + tokA + " x"), wantErr: ErrMalformedAuth},
		{name: "token with control", a: both, header: one("Bearer " + tokA + "\x00"), wantErr: ErrMalformedAuth},
		{name: "token non-ASCII", a: both, header: one("Bearer " + tokA + "é"), wantErr: ErrMalformedAuth},
		{name: "two tokens in one field", a: both, header: one("Bearer " + tokA + ", Bearer " + tokB), wantErr: ErrMalformedAuth},
		{name: "scheme prefix", a: both, header: one("Bearerx " + tokA), wantErr: ErrMalformedAuth},
		{name: "non-ASCII scheme", a: both, header: one("Bëarer " + tokA), wantErr: ErrMalformedAuth},

		// More than one field: refused whatever they hold, before anything
		// else is looked at.
		{name: "good then bad", a: both, header: []string{"Bearer " + tokA, "Bearer " + tokC}, wantErr: ErrDuplicateAuth},
		{name: "bad then good", a: both, header: []string{"Bearer " + tokC, "Bearer " + tokA}, wantErr: ErrDuplicateAuth},
		{name: "same token twice", a: both, header: []string{"Bearer " + tokA, "Bearer " + tokA}, wantErr: ErrDuplicateAuth},
		{name: "two tokens", a: both, header: []string{"Bearer " + tokA, "Bearer " + tokB}, wantErr: ErrDuplicateAuth},
		{name: "two empty fields", a: both, header: []string{"", ""}, wantErr: ErrDuplicateAuth},
		{name: "two fields and a matching cert", a: both, header: []string{"Bearer " + tokA, "Bearer " + tokA}, chains: chains("alice"), wantErr: ErrDuplicateAuth},
		{name: "two fields, tokens not accepted", a: certsOnly, header: []string{"Bearer " + tokA, "x"}, chains: chains("carol"), wantErr: ErrDuplicateAuth},
		{name: "two fields, nil authenticator", a: nil, header: []string{"a", "b"}, wantErr: ErrDuplicateAuth},

		// A certificate alone is its own namespace; with a token, both must
		// name the same identity, and the token's is the one that runs.
		{name: "cert", a: both, chains: chains("carol@example.com"), want: "cert:carol@example.com"},
		{name: "cert only", a: certsOnly, chains: chains("carol"), want: "cert:carol"},
		{name: "cert named like a token identity", a: both, chains: chains("alice"), want: "cert:alice"},
		{name: "cert and token agree", a: both, header: one("Bearer " + tokA), chains: chains("alice"), want: "alice"},
		{name: "cert B, token A", a: both, header: one("Bearer " + tokA), chains: chains("bob"), wantErr: ErrIdentityMismatch},
		{name: "cert A, token B", a: both, header: one("Bearer " + tokB), chains: chains("alice"), wantErr: ErrIdentityMismatch},
		{name: "cert of no token", a: both, header: one("Bearer " + tokB), chains: chains("carol"), wantErr: ErrIdentityMismatch},
		{name: "cert CN differs in case", a: both, header: one("Bearer " + tokA), chains: chains("Alice"), wantErr: ErrIdentityMismatch},
		{name: "cert CN with prefix", a: both, header: one("Bearer " + tokA), chains: chains("cert:alice"), wantErr: ErrIdentityMismatch},
		{name: "cert with bad CN and token", a: both, header: one("Bearer " + tokA), chains: chains("alice smith"), wantErr: ErrIdentityMismatch},
		{name: "cert with empty CN and token", a: both, header: one("Bearer " + tokA), chains: chains(""), wantErr: ErrIdentityMismatch},
		{name: "bad bearer with cert", a: both, header: one("Bearer " + tokC), chains: chains("carol"), wantErr: ErrBadToken},
		{name: "basic scheme with cert", a: both, header: one("Basic YWxpY2U6cGFzcw=="), chains: chains("carol"), wantErr: ErrMalformedAuth},
		{name: "header ignored without tokens", a: certsOnly, header: one("Bearer " + tokA), chains: chains("carol"), want: "cert:carol"},
		{name: "bearer without tokens", a: certsOnly, header: one("Bearer " + tokA), wantErr: ErrNoCredentials},
		{name: "cert not accepted", a: tokensOnly, chains: chains("carol"), wantErr: ErrNoCredentials},
		{name: "cert not accepted with token", a: tokensOnly, header: one("Bearer " + tokA), chains: chains("bob"), want: "alice"},
		{name: "empty CN", a: both, chains: chains(""), wantErr: ErrNoCredentials},
		{name: "bad CN", a: both, chains: chains("carol smith"), wantErr: ErrNoCredentials},
		{name: "CN with colon", a: both, chains: chains("cert:carol"), wantErr: ErrNoCredentials},
		{name: "long CN", a: both, chains: chains(strings.Repeat("c", 65)), wantErr: ErrNoCredentials},
		{name: "longest CN", a: both, chains: chains(strings.Repeat("c", 64)), want: Identity("cert:" + strings.Repeat("c", 64))},
		{name: "empty chain", a: both, chains: [][]*x509.Certificate{{}}, wantErr: ErrNoCredentials},
		{name: "nil leaf", a: both, chains: [][]*x509.Certificate{{nil}}, wantErr: ErrNoCredentials},
		{name: "nothing", a: both, wantErr: ErrNoCredentials},
		{name: "nothing accepted", a: &Authenticator{}, header: one("Bearer " + tokA), chains: chains("carol"), wantErr: ErrNoCredentials},
		{name: "nil authenticator", a: nil, header: one("Bearer " + tokA), wantErr: ErrNoCredentials},
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

// FuzzAuthenticate checks the properties of Authenticate: it never panics;
// more than one Authorization field is always ErrDuplicateAuth; every
// result is either a valid identity or an error wrapping one of the
// sentinels, never both; an identity never comes from credentials that
// disagree (a token and a certificate both used name the same identity);
// a "cert:" identity comes from the certificate alone and any other from
// the token; and a known token alone maps to its identity.
func FuzzAuthenticate(f *testing.F) {
	f.Add("Bearer "+tokA, "", uint8(1), "", true, false)
	f.Add("bearer "+tokB, "", uint8(1), "carol", true, true)
	f.Add("bearer "+tokB, "", uint8(1), "bob", true, true)
	f.Add("", "", uint8(0), "carol", true, true)
	f.Add("Basic abc", "", uint8(1), "", true, false)
	f.Add("Bearer  x", "", uint8(1), "x y", true, true)
	f.Add("Bearer "+tokA, "Bearer "+tokC, uint8(2), "", true, true)
	f.Add("Bearer "+tokC, "Bearer "+tokA, uint8(2), "alice", true, true)
	f.Add("", "", uint8(0), "", true, true)
	toks := testTokens(f)
	sentinels := []error{ErrNoCredentials, ErrBadToken, ErrMalformedAuth, ErrDuplicateAuth, ErrIdentityMismatch}
	f.Fuzz(func(t *testing.T, first, second string, fields uint8, cn string, useTokens, useCerts bool) {
		a := &Authenticator{ClientCerts: useCerts}
		if useTokens {
			a.Tokens = toks
		}
		header := []string{first, second}[:fields%3]
		var ch [][]*x509.Certificate
		if cn != "" {
			ch = chains(cn)
		}
		id, err := a.Authenticate(header, ch)
		if len(header) > 1 {
			if !errors.Is(err, ErrDuplicateAuth) || id != "" {
				t.Fatalf("Authenticate(%q) = %q, %v, want ErrDuplicateAuth", header, id, err)
			}
			return
		}
		if err != nil {
			if id != "" || !slices.ContainsFunc(sentinels, func(s error) bool { return errors.Is(err, s) }) {
				t.Fatalf("Authenticate(%q, %q) = %q, %v, want no identity and a sentinel", header, cn, id, err)
			}
			assertNoSecret(t, err, tokA, tokB, tokC)
		} else if !validAuthIdentity(string(id)) {
			t.Fatalf("Authenticate(%q, %q) = invalid identity %q", header, cn, id)
		}
		hasCert := useCerts && cn != ""
		tokenID, tokenKnown := Identity(""), false
		tokenGiven := useTokens && len(header) == 1 && strings.Trim(header[0], " \t") != ""
		if tokenGiven {
			if tok, ok := parseBearer(strings.Trim(header[0], " \t")); ok {
				tokenID, tokenKnown = toks.Lookup(tok)
			}
		}
		if err == nil {
			if certCN, ok := strings.CutPrefix(string(id), CertIdentityPrefix); ok {
				// From the certificate alone.
				if !hasCert || tokenGiven || certCN != cn {
					t.Fatalf("Authenticate(%q, %q) = %q: not the certificate's alone", header, cn, id)
				}
			} else if !tokenKnown || id != tokenID || hasCert && string(id) != cn {
				t.Fatalf("Authenticate(%q, %q) = %q: not the token's, or the certificate disagrees", header, cn, id)
			}
		}
		switch {
		case tokenKnown && !hasCert && (err != nil || id != tokenID):
			t.Fatalf("Authenticate(%q) = %q, %v, want %q", header, id, err, tokenID)
		case tokenKnown && hasCert && string(tokenID) != cn && !errors.Is(err, ErrIdentityMismatch):
			t.Fatalf("Authenticate(%q, %q) = %q, %v, want ErrIdentityMismatch", header, cn, id, err)
		case tokenGiven && !tokenKnown && err == nil:
			t.Fatalf("Authenticate(%q) = %q with a bad or malformed token", header, id)
		}
	})
}
