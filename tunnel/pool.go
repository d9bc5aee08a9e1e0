package tunnel

import "sync"

// packetBuf is one pooled packet buffer. Pointers to arrays go into the
// pool so that Put does not allocate (staticcheck SA6002).
type packetBuf [bufSize]byte

var bufPool = sync.Pool{New: func() any { return new(packetBuf) }}

func getBuf() *packetBuf  { return bufPool.Get().(*packetBuf) }
func putBuf(b *packetBuf) { bufPool.Put(b) }

// batch is a reusable set of packet buffers for one Read or Write call,
// owned by one goroutine.
type batch struct {
	bufs  [][]byte // bufs[i] views arrs[i]; resliced per packet
	sizes []int
	arrs  []*packetBuf
}

func newBatch(n int) *batch {
	b := &batch{bufs: make([][]byte, n), sizes: make([]int, n), arrs: make([]*packetBuf, n)}
	for i := range b.arrs {
		b.arrs[i] = getBuf()
		b.bufs[i] = b.arrs[i][:]
	}
	return b
}

// reset restores every buffer to its full length.
func (b *batch) reset() {
	for i := range b.arrs {
		b.bufs[i] = b.arrs[i][:]
	}
}

// release returns the buffers to the pool; b must not be used after.
func (b *batch) release() {
	for i, a := range b.arrs {
		putBuf(a)
		b.arrs[i] = nil
		b.bufs[i] = nil
	}
}
