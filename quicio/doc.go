// Package quicio is the QUIC I/O layer of masque: it owns the UDP socket, the
// quic.Transport (connection-ID generation, stateless resets, Retry), admission
// and limits, and runs one worker goroutine per accepted connection that hands
// the connection to an [Application].
//
// It follows the split of Cloudflare's tokio-quiche: quic-go already provides
// the packet router (quic.Transport) and the per-connection I/O loop (each
// *quic.Conn has its own goroutine); quicio adds what surrounds them. It knows
// nothing about HTTP or IP.
package quicio
