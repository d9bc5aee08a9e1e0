package tunnel

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestQPACKStreams(t *testing.T) {
	tests := []struct {
		name    string
		encoder bool
		in      []byte
		code    uint64 // 0: read to the stream's end
	}{
		{"capacity 0", true, []byte{0x20, 0x20}, 0},
		{"capacity 31, prefix full", true, []byte{0x3f, 0x00}, uint64(errCodeQPACKEncoderStream)},
		{"capacity 4096", true, []byte{0x3f, 0xe1, 0x1f}, uint64(errCodeQPACKEncoderStream)},
		{"capacity over 2^62", true, []byte{0x3f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, uint64(errCodeQPACKEncoderStream)},
		{"capacity cut", true, []byte{0x3f, 0xe1}, 0},
		{"insert with name reference", true, []byte{0xc0, 0x01, 'v'}, uint64(errCodeQPACKEncoderStream)},
		{"insert with literal name", true, []byte{0x43, 'a', 'b', 'c', 0x01, 'v'}, uint64(errCodeQPACKEncoderStream)},
		{"duplicate", true, []byte{0x00}, uint64(errCodeQPACKEncoderStream)},
		{"empty encoder stream", true, nil, 0},
		{"stream cancellation", false, []byte{0x44, 0x7f, 0x10}, 0},
		{"section acknowledgment", false, []byte{0x84}, uint64(errCodeQPACKDecoderStream)},
		{"insert count increment 0", false, []byte{0x00}, uint64(errCodeQPACKDecoderStream)},
		{"insert count increment 1", false, []byte{0x01}, uint64(errCodeQPACKDecoderStream)},
		{"stream cancellation cut", false, []byte{0x7f}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			read := readQPACKDecoderStream
			if tt.encoder {
				read = readQPACKEncoderStream
			}
			err := read(bytes.NewReader(tt.in))
			ce, ok := errors.AsType[*connError](err)
			switch {
			case tt.code == 0 && ok:
				t.Errorf("err = %v, want the stream's end", err)
			case tt.code == 0 && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF):
				t.Errorf("err = %v, want the stream's end", err)
			case tt.code != 0 && (!ok || uint64(ce.code) != tt.code || ce.msg == ""):
				t.Errorf("err = %v, want code %#x", err, tt.code)
			}
		})
	}
}

// FuzzQPACKStreams: any encoder or decoder stream ends in the stream's own
// end or a connection error of its kind with a message; nothing else.
func FuzzQPACKStreams(f *testing.F) {
	f.Add(true, []byte{0x20})
	f.Add(true, []byte{0x3f, 0xe1, 0x1f})
	f.Add(true, []byte{0x43, 'a', 'b', 'c', 0x01, 'v'})
	f.Add(false, []byte{0x44, 0x84})
	f.Add(false, []byte{0x01})
	f.Fuzz(func(t *testing.T, encoder bool, b []byte) {
		read, want := readQPACKDecoderStream, errCodeQPACKDecoderStream
		if encoder {
			read, want = readQPACKEncoderStream, errCodeQPACKEncoderStream
		}
		err := read(bytes.NewReader(b))
		if ce, ok := errors.AsType[*connError](err); ok {
			if ce.code != want || ce.msg == "" {
				t.Fatalf("connection error %+v, want code %#x with a message", ce, want)
			}
			return
		}
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("err = %v, want the stream's end", err)
		}
	})
}
