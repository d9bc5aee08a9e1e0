package quicio

import (
	"crypto/rand"

	"github.com/quic-go/quic-go"
)

// connIDLen is the length of the connection IDs the server issues: one
// server-ID byte and seven random bytes.
const connIDLen = 8

// connIDGenerator issues connection IDs whose first byte is the server ID, so
// that a QUIC-LB-aware load balancer (or a reuseport eBPF program) can steer
// packets of a connection to this server without per-connection state.
type connIDGenerator struct {
	serverID byte
}

var _ quic.ConnectionIDGenerator = (*connIDGenerator)(nil)

func (g *connIDGenerator) GenerateConnectionID() (quic.ConnectionID, error) {
	var b [connIDLen]byte
	b[0] = g.serverID
	if _, err := rand.Read(b[1:]); err != nil {
		return quic.ConnectionID{}, err
	}
	return quic.ConnectionIDFromBytes(b[:]), nil
}

func (g *connIDGenerator) ConnectionIDLen() int { return connIDLen }
