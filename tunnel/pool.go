package tunnel

import "sync"

// Two kinds of pooled packet buffers. Pointers to arrays go into the pools
// so that Put does not allocate (staticcheck SA6002).
//
//   - packetBuf (64 KiB) for packets written to a TUN: wireguard's GRO
//     coalesces a flow's packets into the first one's buffer, so that one
//     needs room for a whole super-packet.
//   - smallBuf for packets read from a TUN: wireguard splits a TSO
//     super-packet into MTU-sized packets, and an inner packet never
//     exceeds maxMTU because quic-go caps a QUIC packet at 1452 bytes.
type (
	packetBuf [bufSize]byte
	smallBuf  [smallBufSize]byte
)

// maxMTU is the largest TUN MTU the data path supports.
const maxMTU = 2048

const smallBufSize = Headroom + maxMTU

var (
	bufPool      = sync.Pool{New: func() any { return new(packetBuf) }}
	smallBufPool = sync.Pool{New: func() any { return new(smallBuf) }}
)

func getBuf() *packetBuf      { return bufPool.Get().(*packetBuf) }
func putBuf(b *packetBuf)     { bufPool.Put(b) }
func getSmallBuf() *smallBuf  { return smallBufPool.Get().(*smallBuf) }
func putSmallBuf(b *smallBuf) { smallBufPool.Put(b) }

// readBatch is a reusable set of small buffers for one Device.Read, owned
// by one goroutine. A buffer may be taken out (ownership moves with the
// packet) and is replaced from the pool.
type readBatch struct {
	bufs  [][]byte // bufs[i] views arrs[i]
	sizes []int
	arrs  []*smallBuf
}

func newReadBatch(n int) *readBatch {
	b := &readBatch{bufs: make([][]byte, n), sizes: make([]int, n), arrs: make([]*smallBuf, n)}
	for i := range b.arrs {
		b.arrs[i] = getSmallBuf()
		b.bufs[i] = b.arrs[i][:]
	}
	return b
}

// reset restores every buffer to its full length.
func (b *readBatch) reset() {
	for i := range b.arrs {
		b.bufs[i] = b.arrs[i][:]
	}
}

// take removes buffer i from the batch, replacing it with a fresh one.
func (b *readBatch) take(i int) *smallBuf {
	a := b.arrs[i]
	b.arrs[i] = getSmallBuf()
	b.bufs[i] = b.arrs[i][:]
	return a
}

// release returns the buffers to the pool; b must not be used after.
func (b *readBatch) release() {
	for i, a := range b.arrs {
		putSmallBuf(a)
		b.arrs[i] = nil
		b.bufs[i] = nil
	}
}
