package tunnel

import (
	"fmt"
	"io"

	"github.com/quic-go/quic-go/http3"
)

// The peer's QPACK encoder and decoder streams (RFC 9204 §4.2). We allow no
// dynamic table: our SETTINGS leave SETTINGS_QPACK_MAX_TABLE_CAPACITY at
// its default 0, and our encoder (quic-go/qpack) never inserts. So of the
// encoder stream's instructions only Set Dynamic Table Capacity 0 is valid,
// and of the decoder stream's only Stream Cancellation; everything else is
// a connection error (§4.3.1, §3.2.3, §4.4.1, §4.4.3). The readers hold
// nothing: an instruction is read through, never buffered.

// QPACK connection error codes (RFC 9204 §6).
const (
	errCodeQPACKEncoderStream http3.ErrCode = 0x201 // QPACK_ENCODER_STREAM_ERROR
	errCodeQPACKDecoderStream http3.ErrCode = 0x202 // QPACK_DECODER_STREAM_ERROR
)

// readQPACKEncoderStream reads the peer's encoder stream (after its type)
// until it ends, and returns a *connError for the first instruction our
// zero-capacity table cannot take, or the stream's error.
func readQPACKEncoderStream(r io.ByteReader) error {
	fail := func(format string, args ...any) error {
		return &connError{errCodeQPACKEncoderStream, fmt.Sprintf(format, args...)}
	}
	for {
		b, err := r.ReadByte()
		if err != nil {
			return err
		}
		switch {
		case b&0xe0 == 0x20: // 001xxxxx Set Dynamic Table Capacity (§4.3.1)
			c, err := readPrefixInt(r, b, 5)
			if err != nil {
				return prefixIntErr(err, fail)
			}
			if c != 0 {
				return fail("dynamic table capacity %d over the maximum 0", c)
			}
		case b&0x80 != 0: // 1Txxxxxx Insert with Name Reference (§4.3.2)
			return fail("insert with name reference into a table of capacity 0")
		case b&0x40 != 0: // 01Hxxxxx Insert with Literal Name (§4.3.3)
			return fail("insert with literal name into a table of capacity 0")
		default: // 000xxxxx Duplicate (§4.3.4)
			return fail("duplicate of an entry of an empty table")
		}
	}
}

// prefixIntErr turns a prefix-integer error into the connection error fail
// makes, and passes the stream's own errors on.
func prefixIntErr(err error, fail func(string, ...any) error) error {
	if err == errPrefixIntOverflow {
		return fail("%v", err)
	}
	return err
}

// readQPACKDecoderStream reads the peer's decoder stream (after its type)
// until it ends, and returns a *connError for the first instruction that
// refers to something our encoder never did, or the stream's error.
func readQPACKDecoderStream(r io.ByteReader) error {
	fail := func(format string, args ...any) error {
		return &connError{errCodeQPACKDecoderStream, fmt.Sprintf(format, args...)}
	}
	for {
		b, err := r.ReadByte()
		if err != nil {
			return err
		}
		switch {
		case b&0x80 != 0: // 1xxxxxxx Section Acknowledgment (§4.4.1)
			// We never send a field section with a Required Insert Count
			// other than 0, so none can be acknowledged.
			return fail("section acknowledgment of a section without dynamic references")
		case b&0x40 != 0: // 01xxxxxx Stream Cancellation (§4.4.2)
			if _, err := readPrefixInt(r, b, 6); err != nil {
				return prefixIntErr(err, fail)
			}
		default: // 00xxxxxx Insert Count Increment (§4.4.3)
			// 0 is an error, and so is any increment beyond the 0
			// entries we inserted.
			return fail("insert count increment with no entries inserted")
		}
	}
}

// errPrefixIntOverflow is a prefix integer over 2^62-1.
var errPrefixIntOverflow = fmt.Errorf("qpack: integer too large")

// readPrefixInt reads an integer with an n-bit prefix (RFC 7541 §5.1,
// RFC 9204 §4.1.1) whose first byte is first; values over 2^62-1 are
// errPrefixIntOverflow.
func readPrefixInt(r io.ByteReader, first byte, n uint) (uint64, error) {
	mask := byte(1)<<n - 1
	v := uint64(first & mask)
	if v < uint64(mask) {
		return v, nil
	}
	for shift := uint(0); ; shift += 7 {
		b, err := r.ReadByte()
		if err != nil {
			return 0, unexpectedEOF(err)
		}
		if shift > 56 {
			return 0, errPrefixIntOverflow
		}
		v += uint64(b&0x7f) << shift
		if v >= 1<<62 {
			return 0, errPrefixIntOverflow
		}
		if b&0x80 == 0 {
			return v, nil
		}
	}
}
