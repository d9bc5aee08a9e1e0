package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/coreos/go-systemd/v22/daemon"
)

// notifier tells the service manager how masqued is doing over the
// sd_notify protocol (systemd's Type=notify): READY=1 once it serves,
// RELOADING=1 and READY=1 around a SIGHUP reload, STOPPING=1 when it starts
// to drain, each with a STATUS= line, and STATUS= lines in between.
// Without $NOTIFY_SOCKET (masqued not started by a service manager that
// listens) it sends nothing. It is used by one goroutine.
type notifier struct {
	logger *slog.Logger
	failed bool // a send failed and was logged; later failures are not
}

// enabled reports whether anything listens.
func (n *notifier) enabled() bool { return os.Getenv("NOTIFY_SOCKET") != "" }

// send sends the states (VAR=VALUE lines) in one datagram.
func (n *notifier) send(states ...string) {
	_, err := daemon.SdNotify(false, strings.Join(states, "\n"))
	if err != nil && !n.failed {
		// The service manager then thinks masqued is not up yet, or
		// still up: say so once, the next sends would fail alike.
		n.failed = true
		n.logger.Warn("cannot notify the service manager", "notify_socket", os.Getenv("NOTIFY_SOCKET"), "err", err)
	}
}

// ready says that masqued serves (at start, and after a reload).
func (n *notifier) ready(status string) { n.send(daemon.SdNotifyReady, "STATUS="+status) }

// reloading says that a reload began; ready ends it. MONOTONIC_USEC lets
// systemd tell this reload from an earlier one (sd_notify(3)).
func (n *notifier) reloading() {
	n.send(daemon.SdNotifyReloading, strings.TrimSuffix(daemon.SdNotifyMonotonicUsec(), "\n"), "STATUS=reloading the configuration")
}

// stopping says that masqued drains and will exit.
func (n *notifier) stopping(status string) { n.send(daemon.SdNotifyStopping, "STATUS="+status) }

// status updates the status line alone.
func (n *notifier) status(status string) { n.send("STATUS=" + status) }

// servingStatus is the status line of a server that serves.
func servingStatus(addr string, sessions int) string {
	return fmt.Sprintf("serving on %s: %d sessions", addr, sessions)
}
