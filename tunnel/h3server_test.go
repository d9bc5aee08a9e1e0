package tunnel

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"slices"
	"testing"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

func qpackBlock(t testing.TB, fields ...string) []byte {
	t.Helper()
	var b bytes.Buffer
	enc := qpack.NewEncoder(&b)
	for i := 0; i+1 < len(fields); i += 2 {
		if err := enc.WriteField(qpack.HeaderField{Name: fields[i], Value: fields[i+1]}); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

// TestParseRequest: the request semantics of RFC 9114 §4.3 that
// connect-ip-go and masque-go rely on, and the malformed requests that
// must be reset with H3_MESSAGE_ERROR (§4.1.2).
func TestParseRequest(t *testing.T) {
	ext := []string{":method", "CONNECT", ":protocol", "connect-ip", ":scheme", "https", ":authority", "vpn.test:443", ":path", "/.well-known/masque/ip/*/*/", "capsule-protocol", "?1"}
	req, err := parseRequest(qpackBlock(t, ext...), maxHeaderBytes)
	if err != nil {
		t.Fatal(err)
	}
	if req.Method != http.MethodConnect || req.Proto != "connect-ip" || req.Host != "vpn.test:443" ||
		req.URL.Path != "/.well-known/masque/ip/*/*/" || req.Header.Get("Capsule-Protocol") != "?1" {
		t.Errorf("request = %s %s %s %s %v", req.Method, req.Proto, req.Host, req.URL, req.Header)
	}
	get, err := parseRequest(qpackBlock(t, ":method", "GET", ":scheme", "https", ":authority", "vpn.test", ":path", "/x?y=1"), maxHeaderBytes)
	if err != nil || get.URL.RawQuery != "y=1" || get.Proto != "HTTP/3.0" {
		t.Errorf("GET = %+v, %v", get, err)
	}
	plain, err := parseRequest(qpackBlock(t, ":method", "CONNECT", ":authority", "example.test:443"), maxHeaderBytes)
	if err != nil || plain.Host != "example.test:443" {
		t.Errorf("CONNECT = %+v, %v", plain, err)
	}

	with := func(name, value string) []string {
		out := append([]string(nil), ext...)
		for i := 0; i < len(out); i += 2 {
			if out[i] == name {
				if value == "" {
					return append(out[:i:i], out[i+2:]...)
				}
				out[i+1] = value
				return out
			}
		}
		return append(out, name, value)
	}
	bad := map[string][]string{
		"no :method":                   with(":method", ""),
		"no :authority":                with(":authority", ""),
		"no :path":                     with(":path", ""),
		"no :scheme":                   with(":scheme", ""),
		"a :protocol that is no token": with(":protocol", "connect ip"),
		"uppercase name":               append(append([]string(nil), ext...), "X-Big", "1"),
		"connection-specific field":    append(append([]string(nil), ext...), "connection", "close"),
		"te other than trailers":       append(append([]string(nil), ext...), "te", "gzip"),
		"pseudo after regular":         append([]string{"x-a", "1"}, ext...),
		"duplicate pseudo":             append(append([]string(nil), ext...), ":path", "/again"),
		"response pseudo":              append(append([]string(nil), ext...), ":status", "200"),
		"host differs":                 append(append([]string(nil), ext...), "host", "other.test"),
		"newline in a value":           append(append([]string(nil), ext...), "x-a", "1\n2"),
		":protocol without CONNECT":    with(":method", "GET"),
		"CONNECT with a :path":         {":method", "CONNECT", ":authority", "a:1", ":path", "/"},
		"relative :path":               with(":path", "x"),
	}
	for name, fields := range bad {
		_, err := parseRequest(qpackBlock(t, fields...), maxHeaderBytes)
		re, ok := errors.AsType[*requestError](err)
		if !ok || re.code != http3.ErrCodeMessageError || re.tooLarge {
			t.Errorf("%s: err = %v, want a malformed request", name, err)
		}
	}
	big := append(append([]string(nil), ext...), "x-pad", string(bytes.Repeat([]byte("v"), maxHeaderBytes)))
	if _, err := parseRequest(qpackBlock(t, big...), maxHeaderBytes); !isTooLarge(err) {
		t.Errorf("16 KiB value: err = %v, want too large", err)
	}
	for name, b := range map[string][]byte{
		"dynamic table reference": {0x00, 0x00, 0x80},
		"required insert count":   {0x05, 0x00, 0xd1},
	} {
		// RFC 9204 §2.2.3: a connection error, not the stream's.
		if _, err := parseRequest(b, maxHeaderBytes); !isConnCode(err, http3.ErrCodeQPACKDecompressionFailed) {
			t.Errorf("%s: err = %v, want connection error QPACK_DECOMPRESSION_FAILED", name, err)
		}
	}
}

func isTooLarge(err error) bool {
	re, ok := errors.AsType[*requestError](err)
	return ok && re.tooLarge
}

func isConnCode(err error, code http3.ErrCode) bool {
	ce, ok := errors.AsType[*connError](err)
	return ok && ce.code == code
}

// FuzzParseRequest: any header block gives a request, a requestError with
// a code, or a connection error QPACK_DECOMPRESSION_FAILED; a request always has a method and, unless plain CONNECT, a
// path that starts with "/".
func FuzzParseRequest(f *testing.F) {
	f.Add(qpackBlock(f, ":method", "CONNECT", ":protocol", "connect-ip", ":scheme", "https", ":authority", "a:443", ":path", "/.well-known/masque/ip/*/*/"))
	f.Add(qpackBlock(f, ":method", "CONNECT", ":protocol", "connect-udp", ":scheme", "https", ":authority", "a", ":path", "/.well-known/masque/udp/h/53/"))
	f.Add(qpackBlock(f, ":method", "CONNECT", ":authority", "a:1"))
	f.Add(qpackBlock(f, ":method", "GET", ":scheme", "https", "host", "a", ":path", "/"))
	f.Add([]byte{0x00, 0x00, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := parseRequest(b, 4096)
		if err != nil {
			if ce, ok := errors.AsType[*connError](err); ok {
				if ce.code != http3.ErrCodeQPACKDecompressionFailed || ce.msg == "" {
					t.Fatalf("connection error %v (%#x) from a header block", err, ce.code)
				}
				return
			}
			re, ok := errors.AsType[*requestError](err)
			if !ok || re.code == 0 || re.msg == "" {
				t.Fatalf("error %v is no requestError with a code", err)
			}
			return
		}
		if req.Method == "" || req.URL == nil || req.Body == nil {
			t.Fatalf("request %+v lacks a method, URL or body", req)
		}
		if req.RequestURI != req.Host && (len(req.RequestURI) == 0 || req.RequestURI[0] != '/') {
			t.Fatalf("request URI %q", req.RequestURI)
		}
	})
}

// TestReadControlFrames: after SETTINGS a control stream may carry GOAWAY
// (IDs only decreasing; from a server, client request streams only), frames
// we ignore, and nothing that belongs on a request stream. MAX_PUSH_ID only
// comes from a client. A client's GOAWAY names push IDs (RFC 9114 §5.2): it
// is checked but goes nowhere.
func TestReadControlFrames(t *testing.T) {
	goaway := func(id uint64) []byte { return appendFrame(nil, frameTypeGoAway, quicvarint.Append(nil, id)) }
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	tests := []struct {
		name   string
		server bool // the peer is a server
		in     []byte
		want   []quic.StreamID
		code   http3.ErrCode // 0: the stream's end
	}{
		{"two GOAWAYs", true, cat(goaway(8), appendFrame(nil, 0x21, []byte("grease")), goaway(4)), []quic.StreamID{8, 4}, 0},
		{"GOAWAY that rises", true, cat(goaway(4), goaway(8)), []quic.StreamID{4}, http3.ErrCodeIDError},
		{"GOAWAY for a server stream", true, goaway(3), nil, http3.ErrCodeIDError},
		{"GOAWAY with trailing bytes", true, appendFrame(nil, frameTypeGoAway, []byte{0x04, 0x00}), nil, http3.ErrCodeFrameError},
		{"empty GOAWAY", true, appendFrame(nil, frameTypeGoAway, nil), nil, http3.ErrCodeFrameError},
		{"DATA", true, appendFrame(nil, frameTypeData, []byte("x")), nil, http3.ErrCodeFrameUnexpected},
		{"second SETTINGS", true, appendFrame(nil, frameTypeSettings, nil), nil, http3.ErrCodeFrameUnexpected},
		{"MAX_PUSH_ID from a server", true, appendFrame(nil, frameTypeMaxPushID, []byte{0x01}), nil, http3.ErrCodeFrameUnexpected},
		{"MAX_PUSH_ID from a client", false, appendFrame(nil, frameTypeMaxPushID, []byte{0x01}), nil, 0},
		{"client GOAWAYs for push IDs", false, cat(goaway(7), goaway(3), goaway(3)), nil, 0},
		{"client GOAWAY that rises", false, cat(goaway(4), goaway(8)), nil, http3.ErrCodeIDError},
		{"client GOAWAY that is malformed", false, appendFrame(nil, frameTypeGoAway, []byte{0x40}), nil, http3.ErrCodeFrameError},
		{"DATA from a client", false, appendFrame(nil, frameTypeData, []byte("x")), nil, http3.ErrCodeFrameUnexpected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []quic.StreamID
			err := readControlFrames(bufio.NewReader(bytes.NewReader(tt.in)), tt.server, func(id quic.StreamID) { got = append(got, id) })
			if !slices.Equal(got, tt.want) {
				t.Errorf("GOAWAYs %v, want %v", got, tt.want)
			}
			se, ok := errors.AsType[*connError](err)
			switch {
			case tt.code == 0 && err != io.EOF:
				t.Errorf("err = %v, want the stream's end", err)
			case tt.code != 0 && (!ok || se.code != tt.code):
				t.Errorf("err = %v, want code %#x", err, tt.code)
			}
		})
	}
}

// FuzzReadControlFrames: any control stream after SETTINGS ends in the
// reader's error or a connection error with a code; the GOAWAY IDs seen
// are client request streams and never rise.
func FuzzReadControlFrames(f *testing.F) {
	f.Add(appendFrame(nil, frameTypeGoAway, []byte{0x08}))
	f.Add(append(appendFrame(nil, frameTypeGoAway, []byte{0x08}), appendFrame(nil, frameTypeGoAway, []byte{0x04})...))
	f.Add(appendFrame(nil, 0x21, []byte("x")))
	f.Add(appendFrame(nil, frameTypeData, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		// As a client's, the stream must end the same way, and nothing
		// reaches goAway.
		clientErr := readControlFrames(bufio.NewReader(bytes.NewReader(b)), false, func(id quic.StreamID) {
			t.Fatalf("a client's GOAWAY %d was passed on", id)
		})
		if se, ok := errors.AsType[*connError](clientErr); ok && (se.code == 0 || se.msg == "") {
			t.Fatalf("connection error without code or message: %+v", se)
		}
		last := quic.StreamID(1 << 62)
		err := readControlFrames(bufio.NewReader(bytes.NewReader(b)), true, func(id quic.StreamID) {
			if id%4 != 0 || id > last {
				t.Fatalf("GOAWAY %d after %d passed", id, last)
			}
			last = id
		})
		if se, ok := errors.AsType[*connError](err); ok && (se.code == 0 || se.msg == "") {
			t.Fatalf("connection error without code or message: %+v", se)
		}
		if err == nil {
			t.Fatal("readControlFrames returned nil before the stream's end")
		}
	})
}
