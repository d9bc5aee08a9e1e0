package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/masque-vpn/masque/tunnel"
)

// UDPStatus is the forwarder's part of [Status] (masque udp). Its JSON form
// is stable: fields are only ever added.
type UDPStatus struct {
	Forwards           []UDPForwardStatus `json:"forwards"`
	Flows              int                `json:"flows"`
	FlowsTotal         uint64             `json:"flows_total"`
	FlowsRefused       uint64             `json:"flows_refused"`
	MaxFlows           int                `json:"max_flows"`
	IdleTimeoutSeconds float64            `json:"idle_timeout_seconds"`
	MaxPayload         int                `json:"max_payload,omitempty"` // largest UDP payload that fit, as last learnt
	LastRefusal        string             `json:"last_refusal,omitempty"`
}

// UDPForwardStatus is one --listen/--target or --forward.
type UDPForwardStatus struct {
	Listen string `json:"listen"`
	Target string `json:"target"`
	Flows  int    `json:"flows"`
}

// udpStatusServer answers status requests for masque udp on a unix socket,
// with the same protocol as masque up's: GET /status returns a Status.
type udpStatusServer struct {
	cfg *udpConfig
	fwd *tunnel.UDPForwarder
}

func (s *udpStatusServer) status() Status {
	st := s.fwd.Stats()
	u := &UDPStatus{
		Flows:              st.Flows,
		FlowsTotal:         st.FlowsTotal,
		FlowsRefused:       st.FlowsRefused,
		MaxFlows:           st.MaxFlows,
		IdleTimeoutSeconds: st.IdleTimeout.Seconds(),
		MaxPayload:         st.MaxPayload,
		LastRefusal:        st.LastRefusal,
	}
	for _, f := range st.Forwards {
		u.Forwards = append(u.Forwards, UDPForwardStatus{Listen: f.Listen, Target: f.Target, Flows: f.Flows})
	}
	out := Status{
		State:         "forwarding",
		Server:        s.cfg.server,
		Addresses:     []string{},
		Routes:        []string{},
		TxBytes:       st.TxBytes,
		RxBytes:       st.RxBytes,
		TxPackets:     st.TxDatagrams,
		RxPackets:     st.RxDatagrams,
		RTTms:         float64(st.RTT.Microseconds()) / 1000,
		UptimeSeconds: st.Uptime.Seconds(),
		Reconnects:    int(st.Redials),
		UDP:           u,
	}
	if len(st.Drops) > 0 {
		out.Drops = st.Drops
	}
	return out
}

// printUDPStatus prints a forwarder's status for people.
func printUDPStatus(out io.Writer, st *Status) {
	u := st.UDP
	fmt.Fprintf(out, "state:     %s\n", st.State)
	fmt.Fprintf(out, "server:    %s\n", st.Server)
	for _, f := range u.Forwards {
		fmt.Fprintf(out, "forward:   %s -> %s (%d flows)\n", f.Listen, f.Target, f.Flows)
	}
	fmt.Fprintf(out, "flows:     %d open (at most %d, idle timeout %s), %d opened, %d refused\n",
		u.Flows, u.MaxFlows, time.Duration(u.IdleTimeoutSeconds*float64(time.Second)), u.FlowsTotal, u.FlowsRefused)
	fmt.Fprintf(out, "sent:      %d datagrams, %d bytes\n", st.TxPackets, st.TxBytes)
	fmt.Fprintf(out, "received:  %d datagrams, %d bytes\n", st.RxPackets, st.RxBytes)
	if len(st.Drops) > 0 {
		keys := make([]string, 0, len(st.Drops))
		for k := range st.Drops {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprintf("%s=%d", k, st.Drops[k])
		}
		fmt.Fprintf(out, "dropped:   %s\n", strings.Join(parts, " "))
	}
	if u.MaxPayload > 0 {
		fmt.Fprintf(out, "max size:  %d bytes per datagram\n", u.MaxPayload)
	}
	if u.LastRefusal != "" {
		fmt.Fprintf(out, "refused:   %s\n", u.LastRefusal)
	}
	if st.Reconnects > 0 {
		fmt.Fprintf(out, "reconnects: %d\n", st.Reconnects)
	}
	fmt.Fprintf(out, "rtt:       %.2f ms\n", st.RTTms)
	fmt.Fprintf(out, "uptime:    %s\n", (time.Duration(st.UptimeSeconds) * time.Second).String())
}
