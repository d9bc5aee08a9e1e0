package tunnel

// Device is a batch packet device: the kernel TUN (tun.Device satisfies it)
// or an in-memory fake in tests.
//
// Contract, as golang.zx2c4.com/wireguard/tun.Device:
//   - Read fills up to len(bufs) packets, each starting at bufs[i][offset:],
//     sets sizes[i] and returns how many it filled; len(sizes) >= len(bufs).
//     The buffers stay the caller's.
//   - Write writes every bufs[i][offset:] as one packet. It may modify the
//     buffers (GRO coalescing) and the caller owns them again on return.
//     Write is safe to call from several goroutines at once.
//   - offset must be at least Headroom (room for a virtio-net header in
//     front of the packet, and for our context ID on the way out).
//   - Close makes a blocked Read return an error.
//   - BatchSize is how many packets one Read or Write should carry.
type Device interface {
	Read(bufs [][]byte, sizes []int, offset int) (int, error)
	Write(bufs [][]byte, offset int) (int, error)
	BatchSize() int
}

// Headroom is the space every packet buffer keeps in front of the packet:
// a virtio-net header (10 bytes) for the TUN, and on the way to the peer the
// context ID varint that is written just before the packet.
const Headroom = 16

// maxPacket is the largest inner packet the data path carries: a TUN read
// with offloads returns packets of at most the TUN MTU; 65535 bounds any IP
// packet, and lets GRO on write coalesce into the buffer.
const maxPacket = 65535

// bufSize is the size of one pooled packet buffer.
const bufSize = Headroom + maxPacket
