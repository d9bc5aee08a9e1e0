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
	// ErrDuplicateAuth means the request has more than one Authorization
	// field: which one counts would be up to each parser (RFC 9110 §5.3
	// allows repeating only list-based fields, and credentials are not
	// one), so none does.
	ErrDuplicateAuth = errors.New("more than one authorization field")
	// ErrIdentityMismatch means the bearer token and the client certificate
	// name different identities.
	ErrIdentityMismatch = errors.New("bearer token and client certificate name different identities")
)

// CertIdentityPrefix starts the identity of a client that authenticated
// with a certificate alone: "cert:" and the certificate's common name. A
// token identity never contains ':' (see [ParseTokens]), so a certificate
// can never pass for a token's identity, nor a token for a certificate's.
const CertIdentityPrefix = "cert:"

// Authenticator turns the credentials of a request into an [Identity].
// It is safe for concurrent use as long as its fields are not modified.
type Authenticator struct {
	// Tokens holds the accepted bearer tokens. If nil, bearer tokens are
	// not accepted and the Authorization header is ignored (but still
	// refused when given twice).
	Tokens *Tokens
	// ClientCerts, if true, accepts a verified client certificate: the
	// common name of its leaf names the identity.
	ClientCerts bool
}

// Authenticate returns the identity of a request. authorization holds the
// values of every Authorization field of the request (none if absent) and
// verifiedChains is [crypto/tls.ConnectionState.VerifiedChains], which TLS
// has already verified.
//
// More than one Authorization field is [ErrDuplicateAuth], whatever they
// hold. If bearer tokens are accepted and the field is present, it must be
// "Bearer <token>" (scheme case-insensitive, exactly one space, token of
// visible ASCII) or the result is [ErrMalformedAuth], and the token must be
// known or the result is [ErrBadToken].
//
// If client certificates are accepted and the request has one, its leaf's
// Subject.CommonName names the identity. Alone, the certificate
// authenticates CertIdentityPrefix+CN ("cert:laptop"), provided the CN is
// a valid token identity (1-64 characters of [A-Za-z0-9._@-]). With a
// token, the token's identity must equal the CN or the result is
// [ErrIdentityMismatch]; the request then runs as the token's identity.
// Subject alternative names are not identities: a certificate names one
// identity, so that it can vouch for no token but that one.
//
// Every other case is [ErrNoCredentials]. Every error wraps one of the
// sentinels and the identity is then empty.
func (a *Authenticator) Authenticate(authorization []string, verifiedChains [][]*x509.Certificate) (Identity, error) {
	if len(authorization) > 1 {
		return "", ErrDuplicateAuth
	}
	if a == nil {
		return "", ErrNoCredentials
	}
	var header string
	if len(authorization) == 1 {
		// RFC 9110 §5.5: leading and trailing white space is not part of
		// a field value; HTTP stacks usually strip it already.
		header = strings.Trim(authorization[0], " \t")
	}
	var cn string
	hasCert := a.ClientCerts && len(verifiedChains) > 0 && len(verifiedChains[0]) > 0 && verifiedChains[0][0] != nil
	if hasCert {
		// Every verified chain starts with the same leaf, the peer's
		// certificate.
		cn = verifiedChains[0][0].Subject.CommonName
	}
	if a.Tokens != nil && header != "" {
		tok, ok := parseBearer(header)
		if !ok {
			return "", ErrMalformedAuth
		}
		id, ok := a.Tokens.Lookup(tok)
		if !ok {
			return "", ErrBadToken
		}
		if hasCert && string(id) != cn {
			return "", ErrIdentityMismatch
		}
		return id, nil
	}
	if hasCert {
		if !validIdentity(cn) {
			return "", fmt.Errorf("client certificate common name not a valid identity: %w", ErrNoCredentials)
		}
		return Identity(CertIdentityPrefix + cn), nil
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
