package quicio

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"
)

// QlogTracer returns a quic.Config.Tracer that writes one qlog file per
// connection (quic-go's qlog, as its QLOGDIR does) into dir, named
// <odcid>_<client|server>.sqlog. dir is created 0700: a qlog holds a
// connection's addresses and timings, nobody else's business. A file that
// cannot be created leaves its connection untraced.
func QlogTracer(dir string) (func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("qlog: %w", err)
	}
	return func(_ context.Context, isClient bool, connID quic.ConnectionID) qlogwriter.Trace {
		role := "server"
		if isClient {
			role = "client"
		}
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%s_%s.sqlog", connID, role)), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return nil
		}
		seq := qlogwriter.NewConnectionFileSeq(&bufferedFile{bufio.NewWriter(f), f}, isClient, connID, []string{qlog.EventSchema})
		go seq.Run()
		return seq
	}, nil
}

// bufferedFile is a file written through a buffer, flushed on Close.
type bufferedFile struct {
	*bufio.Writer
	f *os.File
}

func (b *bufferedFile) Close() error { return errors.Join(b.Flush(), b.f.Close()) }
