package tunnel

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// settingsFrame builds a SETTINGS frame from id/value pairs.
func settingsFrame(pairs ...uint64) []byte {
	var payload []byte
	for _, v := range pairs {
		payload = quicvarint.Append(payload, v)
	}
	b := quicvarint.Append(nil, frameTypeSettings)
	b = quicvarint.Append(b, uint64(len(payload)))
	return append(b, payload...)
}

func TestReadSettings(t *testing.T) {
	for _, tt := range []struct {
		name     string
		in       []byte
		want     peerSettings
		wantCode http3.ErrCode // 0: no connError
		wantErr  bool
	}{
		{"empty", settingsFrame(), peerSettings{}, 0, false},
		{"datagram and extended connect", settingsFrame(settingH3Datagram, 1, settingExtendedConnect, 1, settingMaxFieldSection, 1<<20),
			peerSettings{datagram: true, extendedConnect: true}, 0, false},
		{"datagram off", settingsFrame(settingH3Datagram, 0), peerSettings{}, 0, false},
		{"unknown settings ignored", settingsFrame(0x1f*7+0x21, 5, 0x4d51, 9, settingH3Datagram, 1), peerSettings{datagram: true}, 0, false},
		{"datagram value 2", settingsFrame(settingH3Datagram, 2), peerSettings{}, errCodeH3SettingsError, true},
		{"duplicate", settingsFrame(settingH3Datagram, 1, settingH3Datagram, 1), peerSettings{}, errCodeH3SettingsError, true},
		{"reserved HTTP/2 setting", settingsFrame(0x02, 0), peerSettings{}, errCodeH3SettingsError, true},
		{"first frame not SETTINGS", []byte{0x07, 0x01, 0x00}, peerSettings{}, errCodeH3MissingSetting, true},
		{"truncated pair", append(quicvarint.Append(quicvarint.Append(nil, frameTypeSettings), 1), 0x33), peerSettings{}, http3.ErrCodeFrameError, true},
		{"too long", quicvarint.Append(quicvarint.Append(nil, frameTypeSettings), maxSettingsFrameLen+1), peerSettings{}, http3.ErrCodeExcessiveLoad, true},
		{"stream ends in frame", settingsFrame(settingH3Datagram, 1)[:3], peerSettings{}, 0, true},
		{"stream ends at once", nil, peerSettings{}, 0, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readSettings(bytes.NewReader(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("readSettings(%x) = %+v, %v; want error %v", tt.in, got, err, tt.wantErr)
			}
			var se *connError
			isSE := errors.As(err, &se)
			switch {
			case tt.wantCode != 0 && (!isSE || se.code != tt.wantCode):
				t.Fatalf("readSettings(%x) error = %v, want settings error code %#x", tt.in, err, tt.wantCode)
			case tt.wantCode == 0 && isSE:
				t.Fatalf("readSettings(%x) error = %v, want the stream's own error", tt.in, err)
			case tt.wantCode == 0 && err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF):
				t.Fatalf("readSettings(%x) error = %v, want EOF", tt.in, err)
			}
			if err == nil && got != tt.want {
				t.Fatalf("readSettings(%x) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

// FuzzReadSettings: any byte string gives settings, a connError with a
// message, or the reader's error; never a panic, and never more than the
// frame is read.
func FuzzReadSettings(f *testing.F) {
	f.Add(settingsFrame(settingH3Datagram, 1, settingExtendedConnect, 1))
	f.Add(settingsFrame(0x02, 1))
	f.Add(settingsFrame(settingH3Datagram, 1, settingH3Datagram, 0))
	f.Add([]byte{0x04, 0x40})
	f.Add([]byte{0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		ps, err := readSettings(r)
		var se *connError
		switch {
		case err == nil:
			if ps.datagram && !bytes.Contains(b, []byte{settingH3Datagram, 1}) {
				t.Fatalf("datagram on without the setting in %x", b)
			}
		case errors.As(err, &se):
			if se.msg == "" || se.code == 0 {
				t.Fatalf("settings error without code or message: %+v", se)
			}
		}
		if r.Len() > 0 && err == nil {
			// Only the first frame is consumed: what follows is another frame.
			typ, _, perr := quicvarint.Parse(b)
			if perr != nil || typ != frameTypeSettings {
				t.Fatalf("consumed input that does not start with SETTINGS: %x", b)
			}
		}
	})
}
