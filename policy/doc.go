// Package policy makes the server's security decisions: who a client is
// (bearer tokens, client certificates), which inner addresses it gets
// (address pools with per-identity leases) and which destinations it may
// reach (default denies plus operator allow and deny lists).
//
// Policy is pure: apart from [LoadTokens], which reads one file, it does no
// I/O, starts no goroutines and imports no other package of this module.
// It returns decisions and reasons, never HTTP status codes; mapping them to
// protocol outcomes is the caller's job.
package policy

import "strings"

// Identity is the authenticated name of a client. Identities come from two
// namespaces that cannot collide: a bearer token's identity from the tokens
// file (1-64 characters of [A-Za-z0-9._@-], never a ':'), and, for a client
// that presented only a verified certificate, [CertIdentityPrefix] followed
// by the certificate's common name ("cert:laptop").
type Identity string

// validAuthIdentity reports whether s is an identity Authenticate can
// return: a token identity or "cert:" and one.
func validAuthIdentity(s string) bool {
	if cn, ok := strings.CutPrefix(s, CertIdentityPrefix); ok {
		return validIdentity(cn)
	}
	return validIdentity(s)
}

// validIdentity reports whether s is 1-64 characters of [A-Za-z0-9._@-].
func validIdentity(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.', c == '_', c == '@', c == '-':
		default:
			return false
		}
	}
	return true
}
