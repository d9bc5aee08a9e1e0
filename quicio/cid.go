package quicio

import (
	"crypto/rand"

	"github.com/quic-go/quic-go"
)

// ConnIDLen is the length of the connection IDs both ends issue (the server
// through connIDGenerator, the client through Transport.ConnectionIDLength).
//
// 15 is chosen for speed, not for entropy. quic-go appends a packet to a GSO
// batch only when the previous one was exactly full-size, and it caps a
// DATAGRAM's payload at MTU - 37 (header byte + the longest 20-byte connection
// ID + AEAD tag). A short-header packet carrying the largest datagram is
//
//	1 + cid + pn(2) + (1 type + 2 length + MTU-37) + 16 = MTU + cid - 15
//
// so with 15-byte connection IDs a full inner packet makes a full QUIC packet
// and whole bursts leave in one sendmsg (UDP GSO). With the usual 4 or 8
// bytes every datagram packet is a few bytes short and each costs a syscall
// (../shared/PERF.md); measured, 15 bytes gives ~1.7x the TCP throughput.
// TestDatagramFillsPacket guards the arithmetic against quic-go upgrades.
const ConnIDLen = 15

// connIDLen: the server ID byte and 14 random bytes.
const connIDLen = ConnIDLen

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
