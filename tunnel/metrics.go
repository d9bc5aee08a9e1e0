package tunnel

import (
	"strings"
	"sync/atomic"

	"github.com/masque-vpn/masque/policy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go/http3"
)

// dropReason says why the data path dropped a packet. Every drop our code
// makes increments exactly one counter; none is logged one by one.
type dropReason uint8

const (
	dropMalformed     dropReason = iota // not a well-formed IP packet, or a bad datagram
	dropSourceSpoof                     // inner source is not the session's address
	dropDestDenied                      // destination refused by policy
	dropNoSession                       // no session owns the destination
	dropTooBig                          // does not fit the datagram budget (ICMP sent)
	dropContextID                       // datagram with a context ID we do not know
	dropSendFailed                      // SendDatagram failed for another reason
	dropTUNWrite                        // the TUN refused the packet
	dropQueueFull                       // a queue was full: a session's send queue, or the early datagrams of a request not served yet
	dropUnknownStream                   // datagram for a stream that is no session or flow
	dropLinkLocal                       // client: link-local traffic the kernel sends on the TUN (router solicitations, MLD)
	dropSourceBogus                     // client: from the server with a source no network has (loopback, link-local, multicast, unspecified, broadcast)
	dropSourceLocal                     // client: from the server with our own address or one of the host's connected networks as source
	dropLinkControl                     // client: ICMPv6 neighbour discovery (RA, NS, NA, redirect) or ICMPv4 redirect from the server
	numDropReasons
)

var dropReasonNames = [numDropReasons]string{
	dropMalformed:     "malformed",
	dropSourceSpoof:   "source_spoof",
	dropDestDenied:    "destination_denied",
	dropNoSession:     "no_session",
	dropTooBig:        "too_big",
	dropContextID:     "unknown_context_id",
	dropSendFailed:    "send_failed",
	dropTUNWrite:      "tun_write",
	dropQueueFull:     "queue_full",
	dropUnknownStream: "unknown_stream",
	dropLinkLocal:     "link_local",
	dropSourceBogus:   "source_bogus",
	dropSourceLocal:   "source_local",
	dropLinkControl:   "icmp_link_control",
}

func (r dropReason) String() string { return dropReasonNames[r] }

// counters are the data path's counters. The zero value is ready; all fields
// are updated atomically without allocating, but for refusalLog, the
// budget of the refusal log, here for its count of suppressed lines.
type counters struct {
	drops              [numDropReasons]atomic.Uint64
	txPackets, txBytes atomic.Uint64 // towards the peer (datagrams sent)
	rxPackets, rxBytes atomic.Uint64 // from the peer (datagrams received)
	icmpSent           atomic.Uint64
	idleConns          atomic.Uint64    // connections closed for sending no request
	unauthClosed       [2]atomic.Uint64 // unauthenticated connections closed: [0] over maxUnauthConnsPerSource, [1] evicted over maxUnauthConns
	sessions           atomic.Int64
	sessionsTotal      atomic.Uint64
	refused            [numRefusals]atomic.Uint64
	unrouted           [numUnrouted]atomic.Uint64
	connErrors         [numConnErrors]atomic.Uint64 // by connErrorCodes index
	capsuleDrops       [numCapsuleDrops]atomic.Uint64
	datagramCapsules   atomic.Uint64 // DATAGRAM capsules taken on CONNECT-IP streams
	udp                udpCounters   // CONNECT-UDP

	// ADDRESS_REQUEST outcomes (grant).
	addrChanges [numFamilies]atomic.Uint64     // by family
	addrRefused [numAddrOutcomes]atomic.Uint64 // by addrOutcome; only the refusals move

	refusalLog rateLog // CONNECT-IP's refused requests (ratelog.go)
}

func (c *counters) drop(r dropReason) { c.drops[r].Add(1) }

// refusal says why a CONNECT-IP request was refused.
type refusal uint8

const (
	refuseAuth refusal = iota
	refuseBadRequest
	refusePoolExhausted
	refuseConnLimit
	refuseIdentityLimit
	refuseShuttingDown
	refuseMisdirected // :authority names another host or port (421)
	numRefusals
)

var refusalNames = [numRefusals]string{
	refuseAuth:          "unauthenticated",
	refuseBadRequest:    "bad_request",
	refusePoolExhausted: "pool_exhausted",
	refuseConnLimit:     "conn_session_limit",
	refuseIdentityLimit: "identity_session_limit",
	refuseShuttingDown:  "shutting_down",
	refuseMisdirected:   "misdirected",
}

// family indexes per-family counters.
type family uint8

const (
	familyIPv4 family = iota
	familyIPv6
	numFamilies
)

var familyNames = [numFamilies]string{familyIPv4: "ipv4", familyIPv6: "ipv6"}

// addrOutcome is what a session did with one entry of an ADDRESS_REQUEST
// (RFC 9484 §4.7.2, grant). Each refusal increments one counter.
type addrOutcome uint8

const (
	addrKept               addrOutcome = iota // the unspecified address or the one held: answered with the one held
	addrChanged                               // moved to the requested address
	addrRefusedPerCapsule                     // the capsule already changed this family's address
	addrRefusedRate                           // over the session's change rate (addrChangeRate)
	addrRefusedUnavailable                    // not a host prefix, outside the pool, reserved, or held or leased by another
	addrRefusedNoPool                         // the family is not tunnelled
	numAddrOutcomes
)

var addrRefusalNames = [numAddrOutcomes]string{
	addrRefusedPerCapsule:  "per_capsule",
	addrRefusedRate:        "rate",
	addrRefusedUnavailable: "unavailable",
	addrRefusedNoPool:      "no_pool",
}

// unrouted says why a request reached neither CONNECT-IP nor CONNECT-UDP.
type unrouted uint8

const (
	unroutedNone           unrouted = iota // reached a handler (not counted)
	unroutedHeaders                        // HTTP/3 refused the header section: too large (431), undecodable or cut short (stream reset)
	unroutedNotFound                       // no handler for the path (404)
	unroutedHeadersTimeout                 // HEADERS not complete within the request timeout (reset H3_REQUEST_INCOMPLETE)
	unroutedMemoryConn                     // the connection's header budget was spent (reset H3_EXCESSIVE_LOAD)
	unroutedMemorySource                   // the source's header budget was spent (reset H3_EXCESSIVE_LOAD)
	unroutedNoSettings                     // the peer's SETTINGS did not come within the request timeout (H3_MISSING_SETTINGS)
	unroutedNoDatagrams                    // extended CONNECT from a peer without H3_DATAGRAM=1 (400)
	numUnrouted
)

var unroutedNames = [numUnrouted]string{
	unroutedNone:           "",
	unroutedHeaders:        "headers",
	unroutedNotFound:       "not_found",
	unroutedHeadersTimeout: "headers_timeout",
	unroutedMemoryConn:     "memory_conn",
	unroutedMemorySource:   "memory_source",
	unroutedNoSettings:     "no_settings",
	unroutedNoDatagrams:    "no_h3_datagram",
}

// connErrorCodes are the HTTP/3 error codes (RFC 9114 §8.1, RFC 9204 §6,
// RFC 9297 §5.2) with which the server closes a connection for something
// its peer did; each is counted on its own, any other code as "other".
var connErrorCodes = [...]http3.ErrCode{
	http3.ErrCodeGeneralProtocolError, http3.ErrCodeInternalError, http3.ErrCodeStreamCreationError,
	http3.ErrCodeClosedCriticalStream, http3.ErrCodeFrameUnexpected, http3.ErrCodeFrameError,
	http3.ErrCodeExcessiveLoad, http3.ErrCodeIDError, http3.ErrCodeSettingsError,
	http3.ErrCodeMissingSettings, http3.ErrCodeMessageError, http3.ErrCodeDatagramError,
	http3.ErrCodeQPACKDecompressionFailed, errCodeQPACKEncoderStream, errCodeQPACKDecoderStream,
}

const numConnErrors = len(connErrorCodes) + 1 // the last: other

// connErrorIndex is code's index in counters.connErrors.
func connErrorIndex(code http3.ErrCode) int {
	for i, c := range connErrorCodes {
		if c == code {
			return i
		}
	}
	return numConnErrors - 1
}

// connErrorLabel is the label of index i: the code's name in lower case
// without "H3_" ("frame_unexpected").
func connErrorLabel(i int) string {
	if i >= len(connErrorCodes) {
		return "other"
	}
	switch connErrorCodes[i] {
	case errCodeQPACKEncoderStream:
		return "qpack_encoder_stream_error"
	case errCodeQPACKDecoderStream:
		return "qpack_decoder_stream_error"
	}
	return strings.ToLower(strings.TrimPrefix(connErrorCodes[i].String(), "H3_"))
}

// capsuleDrop says why a capsule a client sent on a CONNECT-IP request
// stream was not acted on. Each increments exactly one counter.
type capsuleDrop uint8

const (
	capsuleDropUnknown    capsuleDrop = iota // unknown or reserved type: skipped (RFC 9297 §3.2)
	capsuleDropUnexpected                    // ADDRESS_ASSIGN, ROUTE_ADVERTISEMENT or DNS_ASSIGN from a client: checked, then ignored
	capsuleDropMalformed                     // malformed or cut short: the stream is reset with H3_MESSAGE_ERROR (RFC 9297 §3.3)
	capsuleDropTooLarge                      // a control capsule longer than maxCapsuleLen: the stream is reset with H3_EXCESSIVE_LOAD
	numCapsuleDrops
)

var capsuleDropNames = [numCapsuleDrops]string{
	capsuleDropUnknown:    "unknown_type",
	capsuleDropUnexpected: "unexpected_type",
	capsuleDropMalformed:  "malformed",
	capsuleDropTooLarge:   "too_large",
}

func (d capsuleDrop) String() string { return capsuleDropNames[d] }

var (
	descDrops = prometheus.NewDesc("masque_tunnel_dropped_packets_total",
		"Packets dropped by the data path, by reason.", []string{"reason"}, nil)
	descPackets = prometheus.NewDesc("masque_tunnel_packets_total",
		"Packets carried, by direction (rx: from clients, tx: to clients).", []string{"direction"}, nil)
	descBytes = prometheus.NewDesc("masque_tunnel_bytes_total",
		"Inner IP bytes carried, by direction.", []string{"direction"}, nil)
	descICMP = prometheus.NewDesc("masque_tunnel_icmp_errors_sent_total",
		"ICMP errors generated by the data path.", nil, nil)
	descSessions = prometheus.NewDesc("masque_tunnel_sessions",
		"CONNECT-IP sessions open now.", nil, nil)
	descSessionsTotal = prometheus.NewDesc("masque_tunnel_sessions_total",
		"CONNECT-IP sessions opened since start.", nil, nil)
	descIdleConns = prometheus.NewDesc("masque_tunnel_idle_connections_closed_total",
		"QUIC connections closed because they sent no request in time (RequestTimeout).", nil, nil)
	descUnauthConns = prometheus.NewDesc("masque_tunnel_unauthenticated_connections_closed_total",
		"QUIC connections without an authenticated request closed to bound them, by reason "+
			"(per_source: their source had too many; evicted: the oldest, to make room for a new one).", []string{"reason"}, nil)
	descRefused = prometheus.NewDesc("masque_tunnel_refused_requests_total",
		"CONNECT-IP requests refused, by reason.", []string{"reason"}, nil)
	descPoolInUse = prometheus.NewDesc("masque_pool_addresses_in_use",
		"Client addresses held by open sessions, by address family.", []string{"family"}, nil)
	descPoolReserved = prometheus.NewDesc("masque_pool_addresses_reserved",
		"Client addresses reserved: those in use plus released ones still leased to their identity "+
			"(expired leases are reclaimed lazily), by address family.", []string{"family"}, nil)
	descConnErrors = prometheus.NewDesc("masque_tunnel_connection_errors_total",
		"Connections the server closed with an HTTP/3 error (the peer broke the protocol), by error code.", []string{"code"}, nil)
	descUnrouted = prometheus.NewDesc("masque_tunnel_unrouted_requests_total",
		"Requests that reached neither CONNECT-IP nor CONNECT-UDP, by reason.", []string{"reason"}, nil)
	descCapsuleDrops = prometheus.NewDesc("masque_tunnel_dropped_capsules_total",
		"Capsules from clients on CONNECT-IP streams not acted on, by reason (malformed and too_large end the session).", []string{"reason"}, nil)
	descDatagramCapsules = prometheus.NewDesc("masque_tunnel_datagram_capsules_total",
		"HTTP datagrams received in DATAGRAM capsules on CONNECT-IP streams (RFC 9297 §3.5).", nil, nil)
	descAddrChanges = prometheus.NewDesc("masque_tunnel_address_changes_total",
		"Session addresses changed on a client's ADDRESS_REQUEST (RFC 9484 §4.7.2), by address family.", []string{"family"}, nil)
	descLogSuppressed = prometheus.NewDesc("masque_tunnel_log_suppressed_total",
		"Log lines about refused requests (CONNECT-IP and CONNECT-UDP) not written, over the per-source or global budget.", nil, nil)
	descAddrRefused = prometheus.NewDesc("masque_tunnel_address_requests_refused_total",
		"ADDRESS_REQUEST entries answered with the address held (or none), by reason.", []string{"reason"}, nil)
)

// collector exports counters and the address pools' occupancy to
// Prometheus.
type collector struct {
	c            *counters
	pool4, pool6 *policy.Pool // nil when that family is off
}

var _ prometheus.Collector = collector{}

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDrops, descPackets, descBytes, descICMP, descSessions, descSessionsTotal, descRefused, descIdleConns, descUnauthConns, descPoolInUse, descPoolReserved, descConnErrors, descUnrouted, descCapsuleDrops, descDatagramCapsules, descAddrChanges, descAddrRefused, descLogSuppressed} {
		ch <- d
	}
	describeUDP(ch)
}

func (k collector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range []struct {
		pool   *policy.Pool
		family string
	}{{k.pool4, "ipv4"}, {k.pool6, "ipv6"}} {
		if p.pool == nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(descPoolInUse, prometheus.GaugeValue, float64(p.pool.InUse()), p.family)
		ch <- prometheus.MustNewConstMetric(descPoolReserved, prometheus.GaugeValue, float64(p.pool.Leased()), p.family)
	}
	c := k.c
	for r := range numDropReasons {
		ch <- prometheus.MustNewConstMetric(descDrops, prometheus.CounterValue, float64(c.drops[r].Load()), r.String())
	}
	ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(c.rxPackets.Load()), "rx")
	ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(c.txPackets.Load()), "tx")
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(c.rxBytes.Load()), "rx")
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(c.txBytes.Load()), "tx")
	ch <- prometheus.MustNewConstMetric(descICMP, prometheus.CounterValue, float64(c.icmpSent.Load()))
	ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(c.sessions.Load()))
	ch <- prometheus.MustNewConstMetric(descSessionsTotal, prometheus.CounterValue, float64(c.sessionsTotal.Load()))
	ch <- prometheus.MustNewConstMetric(descIdleConns, prometheus.CounterValue, float64(c.idleConns.Load()))
	ch <- prometheus.MustNewConstMetric(descUnauthConns, prometheus.CounterValue, float64(c.unauthClosed[0].Load()), "per_source")
	ch <- prometheus.MustNewConstMetric(descUnauthConns, prometheus.CounterValue, float64(c.unauthClosed[1].Load()), "evicted")
	for r := range numRefusals {
		ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(c.refused[r].Load()), refusalNames[r])
	}
	for i := range numConnErrors {
		ch <- prometheus.MustNewConstMetric(descConnErrors, prometheus.CounterValue, float64(c.connErrors[i].Load()), connErrorLabel(i))
	}
	for r := unroutedNone + 1; r < numUnrouted; r++ {
		ch <- prometheus.MustNewConstMetric(descUnrouted, prometheus.CounterValue, float64(c.unrouted[r].Load()), unroutedNames[r])
	}
	for d := range numCapsuleDrops {
		ch <- prometheus.MustNewConstMetric(descCapsuleDrops, prometheus.CounterValue, float64(c.capsuleDrops[d].Load()), d.String())
	}
	ch <- prometheus.MustNewConstMetric(descDatagramCapsules, prometheus.CounterValue, float64(c.datagramCapsules.Load()))
	for f, pool := range [numFamilies]*policy.Pool{k.pool4, k.pool6} {
		if pool != nil {
			ch <- prometheus.MustNewConstMetric(descAddrChanges, prometheus.CounterValue, float64(c.addrChanges[f].Load()), familyNames[f])
		}
	}
	for o := range numAddrOutcomes {
		if addrRefusalNames[o] != "" {
			ch <- prometheus.MustNewConstMetric(descAddrRefused, prometheus.CounterValue, float64(c.addrRefused[o].Load()), addrRefusalNames[o])
		}
	}
	ch <- prometheus.MustNewConstMetric(descLogSuppressed, prometheus.CounterValue,
		float64(c.refusalLog.suppressedTotal.Load()+c.udp.refusalLog.suppressedTotal.Load()))
	c.udp.collect(ch)
}
