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

// Identity is the authenticated name of a client: the identity of its bearer
// token or the common name of its verified client certificate.
type Identity string

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
