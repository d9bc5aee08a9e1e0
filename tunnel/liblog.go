package tunnel

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// LibraryLogWriter is an io.Writer for the standard library logger that
// connect-ip-go writes to (one line per dropped packet). It forwards at most
// one line per interval to a slog logger at debug level and counts the rest,
// so a flood of bad packets cannot flood the logs. Install it with
// log.SetOutput in main.
type LibraryLogWriter struct {
	log      *slog.Logger
	interval time.Duration

	mu         sync.Mutex // guards the fields below
	last       time.Time
	suppressed int
}

// NewLibraryLogWriter returns a writer that logs to l at most once per
// interval.
func NewLibraryLogWriter(l *slog.Logger, interval time.Duration) *LibraryLogWriter {
	return &LibraryLogWriter{log: l.With("component", "connect-ip-go"), interval: interval}
}

func (w *LibraryLogWriter) Write(p []byte) (int, error) {
	now := time.Now()
	w.mu.Lock()
	if now.Sub(w.last) < w.interval {
		w.suppressed++
		w.mu.Unlock()
		return len(p), nil
	}
	w.last = now
	suppressed := w.suppressed
	w.suppressed = 0
	w.mu.Unlock()
	w.log.Log(context.Background(), slog.LevelDebug, "library message",
		"message", strings.TrimSpace(string(p)), "suppressed", suppressed)
	return len(p), nil
}
