package quicio

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// sizeRelay forwards UDP between one client and a server and records the
// size of every packet in each direction.
type sizeRelay struct {
	pc     net.PacketConn
	server net.Addr

	mu       sync.Mutex
	client   net.Addr
	up, down map[int]int // packet size → count
	maxSize  int         // drop packets larger than this (0: none)
}

func newSizeRelay(t *testing.T, server net.Addr) *sizeRelay {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &sizeRelay{pc: pc, server: server, up: map[int]int{}, down: map[int]int{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			r.mu.Lock()
			if r.maxSize > 0 && n > r.maxSize {
				r.mu.Unlock()
				continue
			}
			to := r.server
			if from.String() == server.String() {
				r.down[n]++
				to = r.client
			} else {
				r.client = from
				r.up[n]++
			}
			r.mu.Unlock()
			if to != nil {
				pc.WriteTo(buf[:n], to)
			}
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return r
}

// dropAbove makes the relay drop packets larger than n bytes, silently,
// both ways (0: none).
func (r *sizeRelay) dropAbove(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.maxSize = n
}

// reset forgets the sizes seen so far (the padded handshake packets are as
// large as the limit).
func (r *sizeRelay) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.up)
	clear(r.down)
}

func (r *sizeRelay) seen(up bool, size int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if up {
		return r.up[size] > 0
	}
	return r.down[size] > 0
}

// maxDatagram returns the largest datagram payload c accepts now.
func maxDatagram(t *testing.T, c *quic.Conn) int {
	t.Helper()
	var tooLarge *quic.DatagramTooLargeError
	if err := c.SendDatagram(make([]byte, 65536)); !errors.As(err, &tooLarge) {
		t.Fatalf("SendDatagram(64 KiB) = %v, want DatagramTooLargeError", err)
	}
	return int(tooLarge.MaxDatagramPayloadSize)
}

// TestDatagramFillsPacket checks the property ConnIDLen is chosen for: in
// both directions, the largest datagram quic-go accepts travels in a QUIC
// packet of exactly the connection's maximum packet size (the payload limit
// plus 37), which is what lets quic-go batch datagram packets with GSO.
func TestDatagramFillsPacket(t *testing.T) {
	app := newFakeApp(true)
	ts := startServer(t, Config{}, app)
	relay := newSizeRelay(t, ts.Addr())
	c := mustDial(t, relay.pc.LocalAddr())
	sc := recvConn(t, app.served)

	for _, dir := range []struct {
		name string
		up   bool
		conn *quic.Conn
	}{{"client to server", true, c.Conn}, {"server to client", false, sc}} {
		t.Run(dir.name, func(t *testing.T) {
			// PMTUD may raise the limit while we send; the packet must
			// match the limit the datagram was sized by.
			deadline := time.Now().Add(5 * time.Second)
			for time.Now().Before(deadline) {
				n := maxDatagram(t, dir.conn)
				relay.reset()
				if err := dir.conn.SendDatagram(make([]byte, n)); err != nil {
					t.Fatalf("SendDatagram(%d) = %v", n, err)
				}
				ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
				for ctx.Err() == nil && !relay.seen(dir.up, n+37) {
					time.Sleep(5 * time.Millisecond)
				}
				cancel()
				if relay.seen(dir.up, n+37) {
					return
				}
			}
			relay.mu.Lock()
			defer relay.mu.Unlock()
			t.Fatalf("no %d-byte packet carried a maximal datagram; sizes seen up %v, down %v",
				maxDatagram(t, dir.conn)+37, relay.up, relay.down)
		})
	}
}
