package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/masque-vpn/masque/tunnel"
)

// notifier tells the service manager how the tunnel is doing over the
// sd_notify protocol (systemd's Type=notify, masque@.service): STATUS=
// while it connects or reconnects, READY=1 once it is up, STOPPING=1 when
// it goes down. Without $NOTIFY_SOCKET it sends nothing. It is safe for
// concurrent use. A send is one datagram on a unix socket: it does not
// block unless the service manager stopped reading.
type notifier struct {
	logger *slog.Logger
	tun    string      // the TUN's name, for the status line
	failed atomic.Bool // a send failed and was logged; later failures are not
}

// send sends the states (VAR=VALUE lines) in one datagram.
func (n *notifier) send(states ...string) {
	_, err := daemon.SdNotify(false, strings.Join(states, "\n"))
	if err != nil && n.failed.CompareAndSwap(false, true) {
		n.logger.Warn("cannot notify the service manager", "notify_socket", os.Getenv("NOTIFY_SOCKET"), "err", err)
	}
}

// ready says that the tunnel is up.
func (n *notifier) ready(status string) { n.send(daemon.SdNotifyReady, "STATUS="+status) }

// status updates the status line alone.
func (n *notifier) status(status string) { n.send("STATUS=" + status) }

// stopping says that the tunnel goes down and the host is being restored.
func (n *notifier) stopping() {
	n.send(daemon.SdNotifyStopping, "STATUS=going down: restoring the host")
}

// onEvent follows the Agent (tunnel.AgentConfig.OnEvent): READY=1 when the
// tunnel is first up, a status line at each change after.
func (n *notifier) onEvent(e tunnel.AgentEvent) {
	switch e.Kind {
	case tunnel.AgentUp:
		n.ready(upStatus(e.Server.Addr, e.Client.Addresses(), n.tun))
	case tunnel.AgentBack, tunnel.AgentMoved:
		n.status(upStatus(e.Server.Addr, e.Client.Addresses(), n.tun))
	case tunnel.AgentLost:
		n.status("reconnecting: the tunnel to " + e.Server.Addr + " was lost")
	case tunnel.AgentFailing:
		n.status(fmt.Sprintf("reconnecting: attempt %d to %s failed: %s", e.Attempt, e.Server.Addr, strings.ReplaceAll(fmt.Sprint(e.Err), "\n", "; ")))
	}
}

// upStatus is the status line of a tunnel that is up: what the up line
// says.
func upStatus(server string, addrs []netip.Prefix, tun string) string {
	return fmt.Sprintf("up: server=%s addresses=%s tun=%s", server, joinPrefixes(addrs), tun)
}
