package e2e

// Hostile clients (issue 13), continued: requests whose identity is
// ambiguous, and the HTTP/3 (RFC 9114), QPACK (RFC 9204) and HTTP datagram
// (RFC 9297) rules, one h3attack case each, against the real masqued.

import (
	"path/filepath"
	"testing"
	"time"
)

// identityReport is h3attack identity's output.
type identityReport struct {
	Case    string `json:"case"`
	Status  int    `json:"status"`
	Error   string `json:"error"`
	Outcome string `json:"outcome"`
	Code    string `json:"code"`
}

// TestHostileIdentity: a request that names its identity twice, or two
// identities, or a host the server is not, is refused: two Authorization
// fields are a malformed request (400), whichever comes first; a client
// certificate of one identity with another's token is 401; and an
// :authority naming another host is 421 Misdirected Request (RFC 9110
// §15.5.20).
func TestHostileIdentity(t *testing.T) {
	tp := newTopo(t, false)
	tp.startHostileServer(t)
	cert := []string{"-cert", filepath.Join(env.certDir, "dave.crt"), "-key", filepath.Join(env.certDir, "dave.key")}
	for _, c := range []struct {
		name  string
		extra []string
		want  int
	}{
		{"dup-auth-bad-good", nil, 400},
		{"dup-auth-good-bad", nil, 400},
		{"cert-b-token-a", cert, 401},
		{"evil-authority", nil, 421},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := runAttack(t, tp.client, 30*time.Second, "identity", append([]string{"-case", c.name, "-duration", "20s"}, c.extra...)...)
			var rep identityReport
			lastJSON(t, "h3attack identity", out, &rep)
			t.Logf("%s: status %d %s", c.name, rep.Status, rep.Error)
			if rep.Status != c.want {
				t.Errorf("%s: status %d (%s %s %s), want %d", c.name, rep.Status, rep.Error, rep.Outcome, rep.Code, c.want)
			}
		})
	}
}

// conformReport is h3attack conform's output.
type conformReport struct {
	Case    string `json:"case"`
	Outcome string `json:"outcome"`
	Code    string `json:"code"`
	Remote  bool   `json:"remote"`
	Reason  string `json:"reason"`
	Stream  *struct {
		Outcome string `json:"outcome"`
		Code    string `json:"code"`
	} `json:"stream"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// HTTP/3 and QPACK error codes (RFC 9114 §8.1, RFC 9204 §6).
const (
	h3StreamCreationError    = "0x103"
	h3ClosedCriticalStream   = "0x104"
	h3FrameUnexpected        = "0x105"
	h3IDError                = "0x108"
	h3SettingsError          = "0x109"
	qpackDecompressionFailed = "0x200"
	qpackEncoderStreamError  = "0x201"
	qpackDecoderStreamError  = "0x202"
)

// TestHostileConformance: each case breaks one rule that RFC 9114, 9204
// or 9297 makes a connection error, and masqued must close the connection
// with that error's code; the two benign cases (reserved frame types on a
// request stream, trailers) must leave the session and the connection
// working.
func TestHostileConformance(t *testing.T) {
	tp := newTopo(t, false)
	tp.startHostileServer(t)
	for _, c := range []struct {
		name string
		code string // "" for a benign case
	}{
		{"two-qpack-encoder", h3StreamCreationError},
		{"two-qpack-decoder", h3StreamCreationError},
		{"close-qpack-encoder", h3ClosedCriticalStream},
		{"close-qpack-decoder", h3ClosedCriticalStream},
		{"set-capacity-4096", qpackEncoderStreamError},
		{"qpack-insert", qpackEncoderStreamError},
		{"section-ack", qpackDecoderStreamError},
		{"insert-count-increment", qpackDecoderStreamError},
		{"required-insert-count", qpackDecompressionFailed},
		{"h3-datagram-without-quic-datagrams", h3SettingsError},
		{"client-goaway-rising", h3IDError},
		{"data-after-trailers", h3FrameUnexpected},
		{"unknown-frames", ""},
		{"trailers", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := runAttack(t, tp.client, 30*time.Second, "conform", "-case", c.name, "-wait", "1500ms", "-ping", targetIP4, "-duration", "20s")
			var rep conformReport
			lastJSON(t, "h3attack conform", out, &rep)
			stream := ""
			if rep.Stream != nil {
				stream = " stream " + rep.Stream.Outcome + " " + rep.Stream.Code
			}
			t.Logf("%s: connection %s %s remote=%v %q;%s %s", c.name, rep.Outcome, rep.Code, rep.Remote, rep.Reason, stream, rep.Detail)
			if c.code == "" {
				if !rep.OK {
					t.Errorf("%s: the session or the connection did not keep working: connection %s %s%s; %s", c.name, rep.Outcome, rep.Code, stream, rep.Detail)
				}
				return
			}
			if rep.Outcome != "conn_closed" || rep.Code != c.code || !rep.Remote {
				t.Errorf("%s: connection %s %s (remote %v)%s, want closed by the server with %s", c.name, rep.Outcome, rep.Code, rep.Remote, stream, c.code)
			}
		})
	}
}
