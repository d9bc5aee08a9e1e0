package tunnel

import (
	"sync/atomic"

	"github.com/masque-vpn/masque/policy"
	"github.com/prometheus/client_golang/prometheus"
)

// udpDrop says why a CONNECT-UDP flow dropped a datagram. Every drop
// increments exactly one counter; none is logged one by one.
type udpDrop uint8

const (
	udpDropTooBig      udpDrop = iota // does not fit the path: not a QUIC datagram, or larger than the client's buffer
	udpDropMalformed                  // HTTP datagram without a valid context ID
	udpDropContextID                  // context ID other than 0 (RFC 9298 §4: only UDP payloads)
	udpDropUnreachable                // the target answered with ICMP unreachable
	udpDropTargetWrite                // the UDP socket refused the datagram for another reason
	udpDropSendFailed                 // SendDatagram failed for a reason other than the size
	udpDropQueueFull                  // client: the flow was still being set up and its queue was full; server: the flow's queue to the target was full
	udpDropRefused                    // client: the server refused the flow
	udpDropFlowEnded                  // server: still queued for the target when the flow ended
	numUDPDrops
)

var udpDropNames = [numUDPDrops]string{
	udpDropTooBig:      "too_big",
	udpDropMalformed:   "malformed",
	udpDropContextID:   "unknown_context_id",
	udpDropUnreachable: "target_unreachable",
	udpDropTargetWrite: "target_write",
	udpDropSendFailed:  "send_failed",
	udpDropQueueFull:   "queue_full",
	udpDropRefused:     "flow_refused",
	udpDropFlowEnded:   "flow_ended",
}

func (d udpDrop) String() string { return udpDropNames[d] }

// udpRefusal says why a CONNECT-UDP request did not become a flow.
type udpRefusal uint8

const (
	udpRefuseBadRequest    udpRefusal = iota // malformed request or target
	udpRefuseAuth                            // no or bad credentials
	udpRefuseNotAllowed                      // the identity's allow-list does not cover the target
	udpRefuseDestination                     // the resolved address is denied (see udpCounters.denied)
	udpRefuseDNSError                        // the name did not resolve
	udpRefuseDNSTimeout                      // resolution took too long
	udpRefuseDial                            // the UDP socket could not be opened
	udpRefuseConnLimit                       // too many flows on the QUIC connection
	udpRefuseIdentityLimit                   // too many flows of the identity
	udpRefuseShuttingDown                    // the server is shutting down
	udpRefuseMisdirected                     // :authority names another host or port (421)
	numUDPRefusals
)

var udpRefusalNames = [numUDPRefusals]string{
	udpRefuseBadRequest:    "bad_request",
	udpRefuseAuth:          "unauthenticated",
	udpRefuseNotAllowed:    "not_allowed",
	udpRefuseDestination:   "destination_denied",
	udpRefuseDNSError:      "dns_error",
	udpRefuseDNSTimeout:    "dns_timeout",
	udpRefuseDial:          "dial_failed",
	udpRefuseConnLimit:     "conn_flow_limit",
	udpRefuseIdentityLimit: "identity_flow_limit",
	udpRefuseShuttingDown:  "shutting_down",
	udpRefuseMisdirected:   "misdirected",
}

func (r udpRefusal) String() string { return udpRefusalNames[r] }

// maxPolicyReasons bounds the policy.Reason values counted by label.
const maxPolicyReasons = 16

// udpCounters are the CONNECT-UDP server's counters. "up" is client →
// target, "down" is target → client. The zero value is ready; every field is
// updated atomically without allocating, but for refusalLog, the budget of
// the refusal log, here for its count of suppressed lines.
type udpCounters struct {
	flows                    atomic.Int64
	flowsTotal               atomic.Uint64
	upDatagrams, upBytes     atomic.Uint64
	downDatagrams, downBytes atomic.Uint64
	drops                    [numUDPDrops]atomic.Uint64
	refused                  [numUDPRefusals]atomic.Uint64
	denied                   [maxPolicyReasons]atomic.Uint64 // by policy.Reason
	capsuleDrops             [numCapsuleDrops]atomic.Uint64  // unknown_type and malformed only

	refusalLog rateLog // CONNECT-UDP's refused requests (ratelog.go)
}

var (
	descUDPFlows = prometheus.NewDesc("masque_udp_flows",
		"CONNECT-UDP flows open now.", nil, nil)
	descUDPFlowsTotal = prometheus.NewDesc("masque_udp_flows_total",
		"CONNECT-UDP flows opened since start.", nil, nil)
	descUDPDatagrams = prometheus.NewDesc("masque_udp_datagrams_total",
		"UDP payloads carried, by direction (up: client to target, down: target to client).", []string{"direction"}, nil)
	descUDPBytes = prometheus.NewDesc("masque_udp_bytes_total",
		"UDP payload bytes carried, by direction.", []string{"direction"}, nil)
	descUDPDrops = prometheus.NewDesc("masque_udp_dropped_datagrams_total",
		"UDP payloads dropped by CONNECT-UDP flows, by reason.", []string{"reason"}, nil)
	descUDPRefused = prometheus.NewDesc("masque_udp_refused_requests_total",
		"CONNECT-UDP requests refused, by reason.", []string{"reason"}, nil)
	descUDPDenied = prometheus.NewDesc("masque_udp_denied_destinations_total",
		"CONNECT-UDP targets refused by the destination policy, by policy reason.", []string{"reason"}, nil)
	descUDPCapsuleDrops = prometheus.NewDesc("masque_udp_dropped_capsules_total",
		"Capsules from clients on CONNECT-UDP streams not acted on, by reason (malformed ends the flow).", []string{"reason"}, nil)
)

func describeUDP(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUDPFlows, descUDPFlowsTotal, descUDPDatagrams, descUDPBytes, descUDPDrops, descUDPRefused, descUDPDenied, descUDPCapsuleDrops} {
		ch <- d
	}
}

func (c *udpCounters) collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descUDPFlows, prometheus.GaugeValue, float64(c.flows.Load()))
	ch <- prometheus.MustNewConstMetric(descUDPFlowsTotal, prometheus.CounterValue, float64(c.flowsTotal.Load()))
	ch <- prometheus.MustNewConstMetric(descUDPDatagrams, prometheus.CounterValue, float64(c.upDatagrams.Load()), "up")
	ch <- prometheus.MustNewConstMetric(descUDPDatagrams, prometheus.CounterValue, float64(c.downDatagrams.Load()), "down")
	ch <- prometheus.MustNewConstMetric(descUDPBytes, prometheus.CounterValue, float64(c.upBytes.Load()), "up")
	ch <- prometheus.MustNewConstMetric(descUDPBytes, prometheus.CounterValue, float64(c.downBytes.Load()), "down")
	for d := range numUDPDrops {
		if d == udpDropRefused {
			continue // client-side reason
		}
		ch <- prometheus.MustNewConstMetric(descUDPDrops, prometheus.CounterValue, float64(c.drops[d].Load()), d.String())
	}
	for r := range numUDPRefusals {
		ch <- prometheus.MustNewConstMetric(descUDPRefused, prometheus.CounterValue, float64(c.refused[r].Load()), r.String())
	}
	for _, d := range []capsuleDrop{capsuleDropUnknown, capsuleDropMalformed} {
		ch <- prometheus.MustNewConstMetric(descUDPCapsuleDrops, prometheus.CounterValue, float64(c.capsuleDrops[d].Load()), d.String())
	}
	for r := policy.Reason(1); r < maxPolicyReasons; r++ {
		if v := c.denied[r].Load(); v > 0 || r <= policy.ReasonOperatorDeny {
			ch <- prometheus.MustNewConstMetric(descUDPDenied, prometheus.CounterValue, float64(v), r.String())
		}
	}
}

// deny counts a destination refused for reason r.
func (c *udpCounters) deny(r policy.Reason) {
	if r < maxPolicyReasons {
		c.denied[r].Add(1)
	}
}
