package tunnel

// The control plane of a server session: its request stream.
//
//	configure ─► ADDRESS_ASSIGN, ROUTE_ADVERTISEMENT, DNS_ASSIGN ─► stream
//	stream ─► readCapsules ─┬► ADDRESS_REQUEST ─► grant ─► ADDRESS_ASSIGN ─► stream
//	                        ├► DATAGRAM ─► dgramMux.deliverOne ─► the session's receive path
//	                        └► anything else: checked or skipped, and counted
//
// One goroutine, the request's handler, writes configure's capsules and
// then runs readCapsules, which writes the answers: the stream has one
// writer and one reader, and no queue between them. A client that does not
// read its stream blocks only its own handler, and close unblocks it.
//
// The server reads the stream itself rather than through connect-ip-go's
// Conn, whose reader skips DATAGRAM capsules without a trace, resets the
// stream on a malformed capsule with H3_EXCESSIVE_LOAD where RFC 9297 §3.3
// asks for H3_MESSAGE_ERROR, and tells its caller neither.

import (
	"errors"
	"io"
	"net/netip"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// errCodeH3MessageError is H3_MESSAGE_ERROR (RFC 9114 §8.1): a malformed
// message, which is what a malformed capsule makes of the request stream
// (RFC 9297 §3.3).
const errCodeH3MessageError = 0x10e

// configure sends, unsolicited and in this order, the address assignment,
// the route advertisement and the DNS configuration (RFC 9484 §4.7). The
// assignment goes first so that no packet is forwarded before the client
// knows its address.
func (ss *session) configure() error {
	var as []addressEntry
	for _, p := range ss.prefixes() {
		as = append(as, addressEntry{prefix: p})
	}
	b := appendAddresses(nil, capsuleAddressAssign, as)
	routes := ss.srv.routes
	if !ss.scope.full() {
		routes = ss.scopedRoutes()
	}
	if len(routes) > 0 {
		b = appendRouteAdvertisement(b, routes)
	}
	if len(ss.srv.dns) > 0 {
		b = appendDNSAssign(b, ss.srv.dns)
	}
	_, err := ss.str.Write(b)
	return err
}

// run serves the session until its stream or connection ends, and then
// ends the stream: with a FIN when the client ended it or the server closed
// the session, with a reset when the client broke the capsule protocol.
func (ss *session) run() {
	err := ss.readCapsules(ss.str, ss.str)
	c := &ss.srv.counters
	var code http3.ErrCode
	switch {
	case errors.Is(err, errCapsuleTooLarge):
		c.capsuleDrops[capsuleDropTooLarge].Add(1)
		code = http3.ErrCodeExcessiveLoad
	case errors.Is(err, errMalformedCapsule), errors.Is(err, io.ErrUnexpectedEOF):
		// io.ErrUnexpectedEOF: the stream ended inside a capsule
		// (RFC 9297 §3.3).
		c.capsuleDrops[capsuleDropMalformed].Add(1)
		code = errCodeH3MessageError
	default:
		// io.EOF (the client ended the session), a reset, close, or the
		// connection's end. RFC 9484 §3: the session ends with the stream.
		ss.log.Debug("session stream ended", "err", err)
		ss.str.CancelRead(quic.StreamErrorCode(http3.ErrCodeNoError))
		ss.str.Close()
		return
	}
	ss.log.Info("session aborted", "reason", "bad capsule", "err", err)
	ss.str.CancelRead(quic.StreamErrorCode(code))
	ss.str.CancelWrite(quic.StreamErrorCode(code))
}

// readCapsules reads the client's capsules from in (the request stream)
// until it ends or a capsule breaks the protocol, writes the answers to w
// (the stream too) and returns why it stopped.
func (ss *session) readCapsules(in io.Reader, w io.Writer) error {
	c := &ss.srv.counters
	p := http3.NewCapsuleParser(in)
	for {
		typ, r, err := p.Next()
		if err != nil {
			return err
		}
		switch typ {
		case datagramCapsule:
			if err := ss.datagramCapsule(r); err != nil {
				return err
			}
		case capsuleAddressRequest:
			b, err := capsuleBytes(r)
			if err != nil {
				return err
			}
			req, err := parseAddressRequest(b)
			if err != nil {
				return err
			}
			if err := ss.answerAddressRequest(w, req); err != nil {
				return err
			}
		case capsuleAddressAssign, capsuleRouteAdvertisement, capsuleDNSAssign:
			// A client may assign addresses to the server or advertise
			// routes behind it (RFC 9484 §4.7); this server uses neither,
			// but a malformed one still aborts the session (§4.7).
			b, err := capsuleBytes(r)
			if err != nil {
				return err
			}
			switch typ {
			case capsuleAddressAssign:
				_, err = parseAddressAssign(b)
			case capsuleRouteAdvertisement:
				_, err = parseRouteAdvertisement(b)
			default:
				_, err = parseDNSAssign(b)
			}
			if err != nil {
				return err
			}
			c.capsuleDrops[capsuleDropUnexpected].Add(1)
		default:
			// RFC 9297 §3.2: unknown capsule types are skipped. Discard
			// reads through the value without holding it, whatever its
			// announced length.
			c.capsuleDrops[capsuleDropUnknown].Add(1)
			if err := r.Discard(); err != nil {
				return err
			}
		}
	}
}

// datagramCapsule takes a DATAGRAM capsule: an HTTP datagram that came on
// the stream (RFC 9297 §3.5), e.g. through an intermediary without QUIC
// datagrams. It goes the way of a datagram from the connection: checked,
// counted and written to the TUN. A value longer than any context ID and IP
// packet together is dropped as malformed and read past, not held.
func (ss *session) datagramCapsule(r http3.CapsuleReader) error {
	buf := getBuf()
	defer putBuf(buf)
	n, tooBig, err := readCapsule(r, buf[:])
	if err != nil {
		return err
	}
	if tooBig {
		ss.srv.counters.drop(dropMalformed)
	} else {
		ss.mux.deliverOne(ss, buf[:n])
	}
	// Counted once its outcome is.
	ss.srv.counters.datagramCapsules.Add(1)
	return nil
}

// answerAddressRequest grants what it can of an ADDRESS_REQUEST (RFC 9484
// §4.7.2) and answers with an ADDRESS_ASSIGN that carries the session's
// complete assignment (§4.7.1: an assignment replaces the previous one):
// one entry per request, in order (the unspecified address for one it
// cannot grant), and the address of each family not asked for. A capsule
// changes each family's address at most once: a later entry of that
// family is answered with the address it holds then, so 4,000 entries
// walking the pool cost at most two changes (grant).
func (ss *session) answerAddressRequest(w io.Writer, req []addressEntry) error {
	out := make([]addressEntry, 0, len(req)+2)
	asked4, asked6 := false, false
	moved4, moved6 := false, false
	for _, e := range req {
		is4 := e.prefix.Addr().Is4()
		moved := moved6
		if is4 {
			moved = moved4
		}
		a, how := ss.grant(e.prefix, moved)
		var p netip.Prefix
		switch {
		case a.IsValid():
			p = netip.PrefixFrom(a, a.BitLen())
		case is4:
			p = netip.PrefixFrom(netip.IPv4Unspecified(), 32)
		default:
			p = netip.PrefixFrom(netip.IPv6Unspecified(), 128)
		}
		out = append(out, addressEntry{reqID: e.reqID, prefix: p})
		if is4 {
			asked4 = true
			moved4 = moved4 || how == addrChanged
		} else {
			asked6 = true
			moved6 = moved6 || how == addrChanged
		}
	}
	cur := ss.addr.Load()
	if !asked4 && cur.v4.IsValid() {
		out = append(out, addressEntry{prefix: netip.PrefixFrom(cur.v4, 32)})
	}
	if !asked6 && cur.v6.IsValid() {
		out = append(out, addressEntry{prefix: netip.PrefixFrom(cur.v6, 128)})
	}
	_, err := w.Write(appendAddresses(nil, capsuleAddressAssign, out))
	return err
}

// close ends the session: readCapsules returns, and a write blocked on a
// client that does not read its stream gives up, so run returns.
func (ss *session) close() {
	ss.closeOnce.Do(func() {
		if ss.str == nil {
			return
		}
		ss.str.CancelRead(quic.StreamErrorCode(http3.ErrCodeNoError))
		ss.str.SetWriteDeadline(time.Now())
	})
}
