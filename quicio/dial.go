package quicio

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/quic-go/quic-go"
)

// DefaultKeepAlive is the client's keep-alive period: short enough to hold a
// NAT mapping with a 30 s UDP conntrack timeout.
const DefaultKeepAlive = 10 * time.Second

// DialConfig configures [Dial]. Zero values mean the documented defaults.
type DialConfig struct {
	// Addr is the server's "host:port".
	Addr string
	// TLSConfig is cloned; its ServerName is set from ServerName, or from
	// Addr's host when that is a name and ServerName is empty.
	TLSConfig *tls.Config
	// ServerName overrides the TLS server name (SNI and certificate check);
	// needed when Addr is an IP literal and the certificate names a host.
	ServerName string
	// QUICConfig is cloned; nil means datagrams on, DefaultIdleTimeout and
	// DefaultKeepAlive.
	QUICConfig *quic.Config
	// FwMark is set as SO_MARK on the socket so policy routing can let the
	// tunnel's own packets bypass the tunnel. 0 leaves it unset.
	FwMark uint32
	// SocketBuffer is the UDP buffer size (DefaultSocketBuffer).
	SocketBuffer int
	// Logger receives lifecycle logs; nil discards them.
	Logger *slog.Logger
}

// ClientConn is a dialed QUIC connection together with the socket and
// Transport that it owns.
type ClientConn struct {
	*quic.Conn
	tr *quic.Transport
	pc *net.UDPConn
}

// Transport returns the quic.Transport the connection runs on.
func (c *ClientConn) Transport() *quic.Transport { return c.tr }

// Close closes the connection, the Transport and the socket.
func (c *ClientConn) Close() error {
	err := c.Conn.CloseWithError(codeNoError, "")
	// quic.Transport.Close leaves the socket open: it did not create it.
	return errors.Join(err, c.tr.Close(), ignoreClosed(c.pc.Close()))
}

// Dial resolves cfg.Addr, opens a socket of its own and completes a QUIC
// handshake, or fails when ctx is done.
func Dial(ctx context.Context, cfg DialConfig) (*ClientConn, error) {
	if cfg.TLSConfig == nil {
		return nil, errors.New("dial: no TLS configuration")
	}
	host, _, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", cfg.Addr, err)
	}
	raddr, err := net.ResolveUDPAddr("udp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", cfg.Addr, err)
	}
	tlsConf := cfg.TLSConfig.Clone()
	switch {
	case cfg.ServerName != "":
		tlsConf.ServerName = cfg.ServerName
	case tlsConf.ServerName == "":
		tlsConf.ServerName = host
	}
	qc := quicConfig(cfg.QUICConfig, true)
	buf := cfg.SocketBuffer
	if buf == 0 {
		buf = DefaultSocketBuffer
	}
	laddr := ":0"
	if raddr.IP.To4() == nil {
		laddr = "[::]:0"
	}
	pc, err := listenUDP(laddr, socketOptions{buffer: buf, mark: cfg.FwMark})
	if err != nil {
		return nil, fmt.Errorf("open socket: %w", err)
	}
	peer := addrOf(raddr)
	pmtu := func() int { return routeMTU(peer, cfg.FwMark) }
	if qc.InitialPacketSize == 0 {
		qc.InitialPacketSize = initialPacketSize(pmtu(), clientPaths.isSmall(peer))
	}
	tr := &quic.Transport{Conn: pc, ConnectionIDLength: ConnIDLen}
	c, err := tr.Dial(ctx, raddr, tlsConf, qc)
	if err != nil {
		// A handshake that never completes may be one whose packets are
		// too large for the path: the next attempt starts small.
		if handshakeTimedOut(err) && qc.InitialPacketSize > MinPacketSize {
			clientPaths.remember(peer)
		}
		tr.Close()
		pc.Close()
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("connect to %s: timeout", cfg.Addr)
		}
		return nil, fmt.Errorf("connect to %s: %w", cfg.Addr, err)
	}
	go func() {
		if err := watchPath(c, pmtu, clientPaths); err != nil && cfg.Logger != nil {
			cfg.Logger.Warn("path MTU shrank: connection closed, the next starts small", "reason", err)
		}
	}()
	return &ClientConn{Conn: c, tr: tr, pc: pc}, nil
}
