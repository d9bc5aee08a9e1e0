package tunnel

// The peer's unidirectional streams (RFC 9114 §6.2): its control stream
// (SETTINGS, then GOAWAY and frames we ignore) and its QPACK encoder and
// decoder streams (qpackstream.go), each critical and at most one.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// acceptUniStreams reads the peer's unidirectional streams (RFC 9114
// §6.2) until the connection ends. The control stream's SETTINGS go to
// h.settings (nil: checked and dropped), and a server's GOAWAY to h.goAway
// (nil on the server, where a client's GOAWAY only limits pushes we never
// make, and is only checked); the stream must then stay open, and its end
// closes the connection. The QPACK encoder and decoder streams are read
// and checked (qpackstream.go): at most one of each, critical like the
// control stream. A push stream is refused with pushCode
// (H3_STREAM_CREATION_ERROR from a client, which may not push; H3_ID_ERROR
// from a server, as we send no MAX_PUSH_ID). Reserved and unknown types are
// ignored (§6.2.3). The peer is a server iff pushCode is H3_ID_ERROR.
func acceptUniStreams(c *quic.Conn, pushCode http3.ErrCode, h controlHandlers) {
	var seen uniStreamsSeen
	for {
		str, err := c.AcceptUniStream(context.Background())
		if err != nil {
			return
		}
		go serveUniStream(c, str, &seen, pushCode, h)
	}
}

// controlHandlers take what the peer's control stream says.
type controlHandlers struct {
	settings func(peerSettings)
	goAway   func(next quic.StreamID)
}

// uniStreamsSeen records the critical streams a peer has opened: each may
// be opened once (RFC 9114 §6.2.1, RFC 9204 §4.2).
type uniStreamsSeen struct {
	control, encoder, decoder atomic.Bool
}

func serveUniStream(c *quic.Conn, str *quic.ReceiveStream, seen *uniStreamsSeen, pushCode http3.ErrCode, h controlHandlers) {
	r := bufio.NewReaderSize(str, 512)
	typ, err := quicvarint.Read(r)
	if err != nil {
		return
	}
	closeConn := func(code http3.ErrCode, msg string) {
		c.CloseWithError(quic.ApplicationErrorCode(code), msg)
	}
	// closeOn closes the connection for err if it is a connection error;
	// otherwise (the stream ended or was reset) for the end of a critical
	// stream, unless the connection is ending anyway.
	closeOn := func(err error, what string) {
		if ce, ok := errors.AsType[*connError](err); ok {
			closeConn(ce.code, ce.msg)
			return
		}
		if c.Context().Err() == nil {
			closeConn(http3.ErrCodeClosedCriticalStream, what+" closed")
		}
	}
	switch typ {
	case streamTypeControl:
		if !seen.control.CompareAndSwap(false, true) {
			closeConn(http3.ErrCodeStreamCreationError, "second control stream")
			return
		}
		ps, err := readSettings(r)
		if err != nil {
			closeOn(err, "control stream")
			return
		}
		// RFC 9297 §2.1.1: H3_DATAGRAM=1 on a connection whose peer did
		// not offer QUIC datagrams (max_datagram_frame_size).
		if ps.datagram && !c.ConnectionState().SupportsDatagrams.Remote {
			closeConn(http3.ErrCodeSettingsError, "H3_DATAGRAM without QUIC datagram support")
			return
		}
		if h.settings != nil {
			h.settings(ps)
		}
		closeOn(readControlFrames(r, pushCode == http3.ErrCodeIDError, h.goAway), "control stream")
	case streamTypeQPACKEncoder:
		if !seen.encoder.CompareAndSwap(false, true) {
			closeConn(http3.ErrCodeStreamCreationError, "second QPACK encoder stream")
			return
		}
		closeOn(readQPACKEncoderStream(r), "QPACK encoder stream")
	case streamTypeQPACKDecoder:
		if !seen.decoder.CompareAndSwap(false, true) {
			closeConn(http3.ErrCodeStreamCreationError, "second QPACK decoder stream")
			return
		}
		closeOn(readQPACKDecoderStream(r), "QPACK decoder stream")
	case streamTypePush:
		closeConn(pushCode, "unexpected push stream")
	default:
		str.CancelRead(quic.StreamErrorCode(http3.ErrCodeStreamCreationError))
	}
}

// readControlFrames reads a control stream's frames after SETTINGS until
// it ends. A GOAWAY's ID may only decrease (RFC 9114 §5.2); from a server
// it names a client-initiated bidirectional stream and goes to goAway (nil:
// ignored); from a client it names a push ID and asks nothing of us. A
// frame that has no place on this control stream (MAX_PUSH_ID from a
// server among them), a malformed GOAWAY, or a GOAWAY ID that is not valid
// or rises is a *connError. The rest (MAX_PUSH_ID from a client,
// CANCEL_PUSH, PRIORITY_UPDATE, unknown types) asks nothing of us.
func readControlFrames(r *bufio.Reader, peerIsServer bool, goAway func(quic.StreamID)) error {
	last := uint64(1) << 62
	for {
		typ, err := quicvarint.Read(r)
		if err != nil {
			return err
		}
		l, err := quicvarint.Read(r)
		if err != nil {
			return err
		}
		switch {
		case typ == frameTypeData, typ == frameTypeHeaders, typ == frameTypeSettings, typ == frameTypePushPromise,
			typ == 0x02, typ == 0x06, typ == 0x08, typ == 0x09, typ == frameTypeMaxPushID && peerIsServer:
			return &connError{http3.ErrCodeFrameUnexpected, fmt.Sprintf("frame type %#x on the control stream", typ)}
		case typ == frameTypeGoAway:
			if l == 0 || l > 8 {
				return &connError{http3.ErrCodeFrameError, fmt.Sprintf("GOAWAY frame of %d bytes", l)}
			}
			var b [8]byte
			if _, err := io.ReadFull(r, b[:l]); err != nil {
				return err
			}
			id, n, err := quicvarint.Parse(b[:l])
			if err != nil || n != int(l) {
				return &connError{http3.ErrCodeFrameError, "malformed GOAWAY frame"}
			}
			if (peerIsServer && id%4 != 0) || id > last {
				return &connError{http3.ErrCodeIDError, fmt.Sprintf("GOAWAY names %d after %d", id, last)}
			}
			last = id
			if peerIsServer && goAway != nil {
				goAway(quic.StreamID(id))
			}
		default:
			if err := discard(r, l); err != nil {
				return err
			}
		}
	}
}

// Unidirectional stream types (RFC 9114 §6.2, RFC 9204 §4.2).
const (
	streamTypeControl       = 0x00
	streamTypePush          = 0x01
	streamTypeQPACKEncoder  = 0x02
	streamTypeQPACKDecoder  = 0x03
	maxSettingsFrameLen     = 16 << 10
	settingH3Datagram       = 0x33
	settingExtendedConnect  = 0x08
	settingMaxFieldSection  = 0x06
	frameTypeSettings       = 0x04
	maxQuarterStreamID      = 1<<60 - 1
	errCodeH3DatagramError  = 0x33
	errCodeH3SettingsError  = 0x109
	errCodeH3MissingSetting = 0x10a
)

// peerSettings is what a peer's SETTINGS frame says that we look at.
type peerSettings struct {
	datagram, extendedConnect bool
}

// readSettings reads the first frame of a control stream, which must be
// SETTINGS (RFC 9114 §7.2.4), and checks it: no setting twice, none of the
// HTTP/2 settings HTTP/3 reserves, H3_DATAGRAM and ENABLE_CONNECT_PROTOCOL
// 0 or 1. Unknown settings are ignored. An error that is not a
// *connError is the stream's own (it ended or was reset).
func readSettings(r io.ByteReader) (peerSettings, error) {
	var ps peerSettings
	typ, err := quicvarint.Read(r)
	if err != nil {
		return ps, err
	}
	if typ != frameTypeSettings {
		return ps, &connError{http3.ErrCode(errCodeH3MissingSetting), fmt.Sprintf("first control frame has type %#x, not SETTINGS", typ)}
	}
	l, err := quicvarint.Read(r)
	if err != nil {
		return ps, err
	}
	if l > maxSettingsFrameLen {
		return ps, &connError{http3.ErrCodeExcessiveLoad, fmt.Sprintf("SETTINGS frame of %d bytes", l)}
	}
	buf := make([]byte, l)
	for i := range buf {
		if buf[i], err = r.ReadByte(); err != nil {
			return ps, err
		}
	}
	frameErr := func(format string, args ...any) error {
		return &connError{http3.ErrCode(errCodeH3SettingsError), fmt.Sprintf(format, args...)}
	}
	seen := make(map[uint64]bool)
	for len(buf) > 0 {
		id, n, err := quicvarint.Parse(buf)
		if err != nil {
			return ps, &connError{http3.ErrCodeFrameError, "truncated SETTINGS frame"}
		}
		buf = buf[n:]
		val, n, err := quicvarint.Parse(buf)
		if err != nil {
			return ps, &connError{http3.ErrCodeFrameError, "truncated SETTINGS frame"}
		}
		buf = buf[n:]
		if seen[id] {
			return ps, frameErr("setting %#x sent twice", id)
		}
		seen[id] = true
		switch id {
		case 0x00, 0x02, 0x03, 0x04, 0x05: // HTTP/2's, reserved (RFC 9114 §7.2.4.1)
			return ps, frameErr("reserved setting %#x", id)
		case settingH3Datagram, settingExtendedConnect:
			if val > 1 {
				return ps, frameErr("setting %#x has value %d, want 0 or 1", id, val)
			}
			if id == settingH3Datagram {
				ps.datagram = val == 1
			} else {
				ps.extendedConnect = val == 1
			}
		}
	}
	return ps, nil
}
