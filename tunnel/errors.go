package tunnel

import (
	"errors"
	"net"
	"net/http"
	"os"

	"github.com/masque-vpn/masque/policy"
)

// isClosed reports whether err means the device or connection was closed,
// a clean stop rather than a failure.
func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed)
}

// requestStatus is the HTTP status of a CONNECT-IP or CONNECT-UDP request
// refused for its :authority (serverNames.check) or its credentials
// ([policy.Authenticator.Authenticate]); both handlers answer with it.
func requestStatus(err error) int {
	switch {
	case errors.Is(err, errMisdirected):
		// RFC 9110 §15.5.20: the request is for an origin this server is
		// not authoritative for; a client may retry it elsewhere.
		return http.StatusMisdirectedRequest
	case errors.Is(err, errBadAuthority), errors.Is(err, policy.ErrDuplicateAuth):
		// Authorization is no list-based field (RFC 9110 §5.3, §11.6.2):
		// two of them make a malformed request, not a failed login.
		return http.StatusBadRequest
	default:
		// ErrNoCredentials, ErrBadToken, ErrMalformedAuth and
		// ErrIdentityMismatch (RFC 9110 §15.5.2).
		return http.StatusUnauthorized
	}
}
