package quicio

import "github.com/quic-go/quic-go"

// quicConfig clones c (nil: a zero Config) and fills in what every masque
// connection needs: datagrams on (RFC 9221), the idle timeout, and on the
// client the keep-alive, on the server the handshake timeout. The initial
// packet size is chosen per peer (initialPacketSize) unless c sets it.
func quicConfig(c *quic.Config, client bool) *quic.Config {
	if c != nil {
		c = c.Clone()
	} else {
		c = &quic.Config{}
	}
	c.EnableDatagrams = true
	if c.MaxIdleTimeout == 0 {
		c.MaxIdleTimeout = DefaultIdleTimeout
	}
	if client {
		if c.KeepAlivePeriod == 0 {
			c.KeepAlivePeriod = DefaultKeepAlive
		}
	} else if c.HandshakeIdleTimeout == 0 {
		c.HandshakeIdleTimeout = DefaultHandshakeTimeout
	}
	return c
}
