package tunnel

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

// Drops at the ends of a session's or flow's life and at the TUN: each is
// counted, none is left to the garbage collector uncounted.

// A session that ends with batches still queued for its sender drops them
// as no_session, packet by packet.
func TestEndedSessionCountsQueuedPackets(t *testing.T) {
	s, ss, a := newRouteTestServer(t)
	pkt := udp4(netip.MustParseAddr("198.18.2.2"), a, 53, 1000, []byte("x"))
	b := newReadBatch(3)
	defer b.release()
	var touched []*session
	for range 4 { // four batches of three packets
		b.reset()
		for i := range 3 {
			b.sizes[i] = copy(b.bufs[i][Headroom:], pkt)
		}
		touched = s.routeBatch(b, 3, touched)
	}
	if got := len(ss.txQueue); got != 4 {
		t.Fatalf("queued batches = %d, want 4", got)
	}
	ss.sendDone = make(chan struct{})
	close(ss.sendDone)
	done := make(chan struct{})
	go func() { ss.runSend(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("runSend did not return after the session ended")
	}
	if got := s.counters.drops[dropNoSession].Load(); got != 12 {
		t.Errorf("no_session drops = %d, want 12", got)
	}
	if got := len(ss.txQueue); got != 0 {
		t.Errorf("%d batches left queued", got)
	}
	if got := s.counters.txPackets.Load(); got != 0 {
		t.Errorf("tx packets = %d, want 0: an ended session sends nothing", got)
	}
}

// failingDevice is a Device whose Write fails with err.
type failingDevice struct{ err error }

func (d failingDevice) Read([][]byte, []int, int) (int, error) { return 0, errors.New("no reads") }
func (d failingDevice) Write([][]byte, int) (int, error)       { return 0, d.err }
func (d failingDevice) BatchSize() int                         { return 1 }

func TestTUNWriteDropsAreCountedPerPacket(t *testing.T) {
	e := errors.New("no buffer space")
	tests := []struct {
		name string
		err  error
		n    int
		want uint64
	}{
		{"one failure of four writes", errors.Join(e), 4, 1},
		{"three failures of four writes", errors.Join(e, e, e), 4, 3},
		{"GRO failed: the whole batch", e, 4, 4},
		{"device closed", errors.New("file already closed"), 2, 2},
		{"more errors than packets", errors.Join(e, e, e), 2, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tunWriteDrops(tt.err, tt.n); got != tt.want {
				t.Errorf("tunWriteDrops(%v, %d) = %d, want %d", tt.err, tt.n, got, tt.want)
			}
			s := &Server{cfg: ServerConfig{Device: failingDevice{tt.err}}}
			s.writeTUN(make([][]byte, tt.n))
			if got := s.counters.drops[dropTUNWrite].Load(); got != tt.want {
				t.Errorf("tun_write drops after writeTUN = %d, want %d", got, tt.want)
			}
		})
	}
}

// A CONNECT-UDP flow that ends with client datagrams still queued for the
// target drops them as flow_ended; the server exports that and queue_full.
func TestEndedFlowCountsQueuedDatagrams(t *testing.T) {
	srv := &Server{}
	p := &udpProxy{counters: &srv.counters.udp}
	f := newUDPFlow(p, nil, 1)
	for range 5 {
		f.deliver([]byte{0, 'x'})
	}
	for range udpInQueueLen {
		f.deliver([]byte{0, 'y'})
	}
	if got := srv.counters.udp.drops[udpDropQueueFull].Load(); got != 5 {
		t.Errorf("queue_full drops = %d, want 5", got)
	}
	f.dropQueued()
	if got := srv.counters.udp.drops[udpDropFlowEnded].Load(); got != udpInQueueLen {
		t.Errorf("flow_ended drops = %d, want %d", got, udpInQueueLen)
	}
	for reason, want := range map[string]float64{"queue_full": 5, "flow_ended": udpInQueueLen} {
		if got := gatherValue(t, srv, "masque_udp_dropped_datagrams_total", reason); got != want {
			t.Errorf(`masque_udp_dropped_datagrams_total{reason=%q} = %v, want %v`, reason, got, want)
		}
	}
}
