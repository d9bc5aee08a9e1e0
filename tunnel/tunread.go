package tunnel

import (
	"net/netip"
)

// runTUNReader reads batches from the server TUN and routes each packet to
// the session that owns its destination. It exits when the Device is
// closed. It is the only reader of the Device.
func (s *Server) runTUNReader() {
	defer close(s.tunDone)
	dev := s.cfg.Device
	n := dev.BatchSize()
	b := newBatch(n)
	defer b.release()
	var icmpBuf [Headroom + maxICMPv6Len]byte
	for {
		b.reset()
		count, err := dev.Read(b.bufs, b.sizes, Headroom)
		if err != nil {
			if isClosed(err) {
				return
			}
			// A transient read error (e.g. a too-large GSO batch) must not
			// end the server.
			s.counters.drop(dropMalformed)
			continue
		}
		for i := range count {
			buf := b.bufs[i][:Headroom+b.sizes[i]]
			pkt := buf[Headroom:]
			h, ok := parseIPHeader(pkt)
			if !ok {
				s.counters.drop(dropMalformed)
				continue
			}
			ss := s.router.lookup(h.dst)
			if ss == nil {
				s.counters.drop(dropNoSession)
				continue
			}
			buf = buf[:Headroom+h.totalLen]
			err := ss.send(buf)
			if err == nil {
				s.counters.txPackets.Add(1)
				s.counters.txBytes.Add(uint64(h.totalLen))
				continue
			}
			if mtu, ok := tooLargeMTU(err, ss.str.StreamID()); ok {
				s.counters.drop(dropTooBig)
				from := s.gatewayFor(h.src)
				if from.IsValid() {
					m := appendICMPError(icmpBuf[:Headroom], pkt[:h.totalLen], icmpTooBig, mtu, from)
					if len(m) > Headroom {
						s.writeTUN([][]byte{m})
						s.counters.icmpSent.Add(1)
					}
				}
				continue
			}
			s.counters.drop(dropSendFailed)
		}
	}
}

// writeTUN writes a batch of packets (each at bufs[i][Headroom:]) to the
// server TUN.
func (s *Server) writeTUN(bufs [][]byte) {
	if _, err := s.cfg.Device.Write(bufs, Headroom); err != nil {
		s.counters.drop(dropTUNWrite)
	}
}

// gateway returns the server's address of pkt's family inside the pools,
// the source of ICMP errors the server sends to clients.
func (s *Server) gateway(pkt []byte) netip.Addr {
	if len(pkt) == 0 {
		return netip.Addr{}
	}
	if pkt[0]>>4 == 4 {
		if s.cfg.Pool4 != nil {
			return s.cfg.Pool4.Gateway()
		}
		return netip.Addr{}
	}
	if s.cfg.Pool6 != nil {
		return s.cfg.Pool6.Gateway()
	}
	return netip.Addr{}
}

// gatewayFor returns the gateway of addr's family.
func (s *Server) gatewayFor(addr netip.Addr) netip.Addr {
	if addr.Is4() {
		if s.cfg.Pool4 != nil {
			return s.cfg.Pool4.Gateway()
		}
	} else if s.cfg.Pool6 != nil {
		return s.cfg.Pool6.Gateway()
	}
	return netip.Addr{}
}
