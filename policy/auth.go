package policy

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
)

// Errors returned by [Authenticator.Authenticate]. Callers branch on them
// with [errors.Is]; the errors carry no secret.
var (
	// ErrNoCredentials means the request had neither an accepted bearer
	// token nor an accepted verified client certificate.
	ErrNoCredentials = errors.New("no credentials")
	// ErrBadToken means the bearer token is not a known token.
	ErrBadToken = errors.New("unknown bearer token")
	// ErrMalformedAuth means the Authorization header is not
	// "Bearer <token>".
	ErrMalformedAuth = errors.New("malformed authorization header")
)

// Authenticator turns the credentials of a request into an [Identity].
// It is safe for concurrent use as long as its fields are not modified.
type Authenticator struct {
	// Tokens holds the accepted bearer tokens. If nil, bearer tokens are
	// not accepted and the Authorization header is ignored.
	Tokens *Tokens
	// ClientCerts, if true, accepts a verified client certificate: the
	// common name of its leaf is the identity.
	ClientCerts bool
}

// Authenticate returns the identity of a request. authorization is the raw
// value of the Authorization header ("" if absent) and verifiedChains is
// [crypto/tls.ConnectionState.VerifiedChains], which TLS has already
// verified.
//
// If bearer tokens are accepted and the header is present, it decides: it
// must be "Bearer <token>" (scheme case-insensitive, exactly one space,
// token of visible ASCII) or the result is [ErrMalformedAuth], and the token
// must be known or the result is [ErrBadToken]. Otherwise, if client
// certificates are accepted, the leaf's Subject.CommonName is the identity
// when it is a valid identity (1-64 characters of [A-Za-z0-9._@-]). Every
// other case is [ErrNoCredentials]. Every error wraps one of the three
// sentinels.
func (a *Authenticator) Authenticate(authorization string, verifiedChains [][]*x509.Certificate) (Identity, error) {
	if a == nil {
		return "", ErrNoCredentials
	}
	// RFC 9110 §5.5: leading and trailing white space is not part of a
	// field value; HTTP stacks usually strip it already.
	authorization = strings.Trim(authorization, " \t")
	if a.Tokens != nil && authorization != "" {
		tok, ok := parseBearer(authorization)
		if !ok {
			return "", ErrMalformedAuth
		}
		id, ok := a.Tokens.Lookup(tok)
		if !ok {
			return "", ErrBadToken
		}
		return id, nil
	}
	if a.ClientCerts && len(verifiedChains) > 0 && len(verifiedChains[0]) > 0 && verifiedChains[0][0] != nil {
		// Every verified chain starts with the same leaf, the peer's
		// certificate.
		cn := verifiedChains[0][0].Subject.CommonName
		if !validIdentity(cn) {
			return "", fmt.Errorf("client certificate common name not a valid identity: %w", ErrNoCredentials)
		}
		return Identity(cn), nil
	}
	return "", ErrNoCredentials
}

// parseBearer extracts the token from "Bearer <token>" (RFC 6750 §2.1). The
// scheme is case-insensitive (RFC 9110 §11.1) and separated from the token
// by exactly one space. The token must be non-empty visible ASCII.
func parseBearer(h string) (token string, ok bool) {
	const scheme = "bearer "
	if len(h) <= len(scheme) || !strings.EqualFold(h[:len(scheme)], scheme) {
		return "", false
	}
	token = h[len(scheme):]
	if !visibleASCII(token) {
		return "", false
	}
	return token, true
}
