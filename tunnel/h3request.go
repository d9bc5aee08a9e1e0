package tunnel

// A request stream up to its request: the frames before and of HEADERS
// (read within a byte budget), and the header section decoded (QPACK) and
// checked into an *http.Request (RFC 9114 §4.1-§4.4).

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
	"golang.org/x/net/http/httpguts"
)

// requestError is a malformed request: the stream is reset with code
// (RFC 9114 §4.1.2), or, for a header section over the limit, answered
// with 431.
type requestError struct {
	code     http3.ErrCode
	tooLarge bool
	msg      string
}

func (e *requestError) Error() string { return e.msg }

func malformedRequest(format string, args ...any) error {
	return &requestError{code: http3.ErrCodeMessageError, msg: fmt.Sprintf(format, args...)}
}

// connError is a connection error found on a request stream.
type connError struct {
	code http3.ErrCode
	msg  string
}

func (e *connError) Error() string { return e.msg }

// readRequestHeaders reads a request stream up to and including its
// HEADERS frame and returns the frame's payload. The payload's buffer grows
// as its bytes arrive, never ahead of them from the announced length, and
// every growth is first taken from reserve (nil: no budget); reserve's
// error ends the read. Unknown and reserved frame types before HEADERS are
// skipped (§9); a DATA frame or a frame that has no place on a request
// stream is a connection error; the stream's end is a requestError
// (H3_REQUEST_INCOMPLETE).
func readRequestHeaders(r *bufio.Reader, limit int, reserve func(n int) error) ([]byte, error) {
	incomplete := func(err error) error {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return &requestError{code: http3.ErrCodeRequestIncomplete, msg: "stream ended before the request's HEADERS"}
		}
		return err
	}
	for {
		typ, err := quicvarint.Read(r)
		if err != nil {
			return nil, incomplete(err)
		}
		l, err := quicvarint.Read(r)
		if err != nil {
			return nil, incomplete(err)
		}
		switch typ {
		case frameTypeHeaders:
			if l > uint64(limit) {
				return nil, &requestError{code: http3.ErrCodeExcessiveLoad, tooLarge: true, msg: fmt.Sprintf("HEADERS frame of %d bytes", l)}
			}
			return readGrowing(r, int(l), reserve, incomplete)
		case frameTypeData:
			return nil, &connError{http3.ErrCodeFrameUnexpected, "DATA frame before HEADERS"}
		}
		if forbiddenOnRequestStream(typ) {
			return nil, &connError{http3.ErrCodeFrameUnexpected, fmt.Sprintf("frame type %#x on a request stream", typ)}
		}
		if l > uint64(limit) {
			// An unknown frame is skipped, but not without bound.
			return nil, &requestError{code: http3.ErrCodeExcessiveLoad, msg: fmt.Sprintf("unknown frame of %d bytes before HEADERS", l)}
		}
		if _, err := r.Discard(int(l)); err != nil {
			return nil, incomplete(err)
		}
	}
}

// headerChunk is the first growth of a header buffer; later ones double it.
const headerChunk = 512

// readGrowing reads n bytes from r into a buffer that grows, by doubling
// from headerChunk, only once the bytes it holds have arrived.
func readGrowing(r *bufio.Reader, n int, reserve func(int) error, wrap func(error) error) ([]byte, error) {
	var b []byte
	for len(b) < n {
		if len(b) == cap(b) {
			grow := min(n-len(b), max(headerChunk, cap(b)))
			if reserve != nil {
				if err := reserve(grow); err != nil {
					return nil, err
				}
			}
			// make, not slices.Grow: the capacity is exactly what was
			// reserved.
			nb := make([]byte, len(b), len(b)+grow)
			copy(nb, b)
			b = nb
		}
		m, err := r.Read(b[len(b):min(cap(b), n)])
		b = b[:len(b)+m]
		if err != nil && len(b) < n {
			return nil, wrap(err)
		}
	}
	return b, nil
}

// forbiddenOnRequestStream reports the frame types that are a connection
// error H3_FRAME_UNEXPECTED on a request stream (RFC 9114 §7.2): those of
// the control stream, PUSH_PROMISE from a client, and HTTP/2's reserved
// types (§7.2.8).
func forbiddenOnRequestStream(typ uint64) bool {
	switch typ {
	case frameTypeCancelPush, frameTypeSettings, frameTypePushPromise, frameTypeGoAway, frameTypeMaxPushID,
		0x02, 0x06, 0x08, 0x09:
		return true
	}
	return false
}

// discard skips n bytes of r, however many.
func discard(r *bufio.Reader, n uint64) error {
	for n > 0 {
		d, err := r.Discard(int(min(n, 1<<20)))
		n -= uint64(d)
		if err != nil {
			return err
		}
	}
	return nil
}

// connectionSpecific are the fields HTTP/3 forbids (RFC 9114 §4.2).
var connectionSpecific = map[string]bool{
	"connection": true, "keep-alive": true, "proxy-connection": true,
	"transfer-encoding": true, "upgrade": true,
}

// parseRequest decodes a request's header section (QPACK, static table
// only) into an *http.Request without body or context. sizeLimit bounds the
// decoded section as RFC 9114 §4.2.2 counts it.
func parseRequest(block []byte, sizeLimit int) (*http.Request, error) {
	decode := qpack.NewDecoder().Decode(block)
	var method, scheme, authority, path, protocol string
	seen := map[string]bool{}
	header := make(http.Header)
	regular := false
	size := 0
	for {
		f, err := decode()
		if err == io.EOF {
			break
		}
		if err != nil {
			// RFC 9204 §2.2.3, §6: a field section that does not decode
			// (a Required Insert Count other than 0 among them: we allow
			// no dynamic table) is a connection error.
			return nil, &connError{http3.ErrCodeQPACKDecompressionFailed, "qpack: " + err.Error()}
		}
		if size += len(f.Name) + len(f.Value) + 32; size > sizeLimit {
			return nil, &requestError{code: http3.ErrCodeExcessiveLoad, tooLarge: true, msg: "header section too large"}
		}
		if !httpguts.ValidHeaderFieldValue(f.Value) {
			return nil, malformedRequest("invalid value of %q", f.Name)
		}
		if f.IsPseudo() {
			if regular {
				return nil, malformedRequest("pseudo-header %s after a regular field", f.Name)
			}
			if seen[f.Name] {
				return nil, malformedRequest("duplicate pseudo-header %s", f.Name)
			}
			seen[f.Name] = true
			switch f.Name {
			case ":method":
				method = f.Value
			case ":scheme":
				scheme = strings.ToLower(f.Value)
			case ":authority":
				authority = f.Value
			case ":path":
				path = f.Value
			case ":protocol":
				protocol = f.Value
			default:
				return nil, malformedRequest("pseudo-header %s in a request", f.Name)
			}
			continue
		}
		regular = true
		if !httpguts.ValidHeaderFieldName(f.Name) || strings.ToLower(f.Name) != f.Name {
			return nil, malformedRequest("invalid field name %q", f.Name)
		}
		if connectionSpecific[f.Name] || (f.Name == "te" && f.Value != "trailers") {
			return nil, malformedRequest("connection-specific field %s", f.Name)
		}
		header.Add(f.Name, f.Value)
	}
	if method == "" || !httpguts.ValidHeaderFieldName(method) {
		return nil, malformedRequest("missing or invalid :method %q", method)
	}
	hosts := header.Values("Host")
	if len(hosts) > 1 || (len(hosts) == 1 && seen[":authority"] && hosts[0] != authority) {
		return nil, malformedRequest("Host does not match :authority")
	}
	req := &http.Request{
		Method:        method,
		Proto:         "HTTP/3.0",
		ProtoMajor:    3,
		Header:        header,
		Body:          http.NoBody,
		ContentLength: -1,
	}
	switch {
	case method == http.MethodConnect && seen[":protocol"]:
		// Extended CONNECT (RFC 9220, RFC 8441 §4). http3 reports the
		// protocol as the request's Proto, and connect-ip-go and masque-go
		// look for it there.
		if !httpguts.ValidHeaderFieldName(protocol) {
			return nil, malformedRequest("invalid :protocol %q", protocol)
		}
		if scheme == "" || authority == "" || !strings.HasPrefix(path, "/") {
			return nil, malformedRequest("extended CONNECT needs :scheme, :authority and :path")
		}
		req.Proto = protocol
	case method == http.MethodConnect:
		if seen[":scheme"] || seen[":path"] || authority == "" {
			return nil, malformedRequest("CONNECT needs :authority and no :scheme or :path")
		}
		req.URL = &url.URL{Host: authority}
		req.RequestURI = authority
		req.Host = authority
		return req, nil
	default:
		if seen[":protocol"] {
			return nil, malformedRequest(":protocol in a %s request", method)
		}
		if authority == "" && len(hosts) == 1 {
			authority = hosts[0]
		}
		if scheme == "" || authority == "" || !strings.HasPrefix(path, "/") {
			return nil, malformedRequest("request needs :scheme, :authority and :path")
		}
	}
	u, err := url.ParseRequestURI(path)
	if err != nil {
		return nil, malformedRequest("invalid :path: %v", err)
	}
	req.URL = u
	req.RequestURI = path
	req.Host = authority
	if cl := header.Get("Content-Length"); cl != "" {
		n, err := strconv.ParseUint(cl, 10, 63)
		if err != nil {
			return nil, malformedRequest("invalid content-length")
		}
		req.ContentLength = int64(n)
	}
	return req, nil
}
