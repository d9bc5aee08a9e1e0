package tunnel

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// ipRouter maps an inner destination address to the session that owns it:
// the second packet router of the system (quic.Transport routes by
// connection ID, this one by inner IP). Lookups are lock-free and do not
// allocate: the map is copied on every change, which happens only when a
// session starts or ends.
type ipRouter struct {
	m  atomic.Pointer[map[netip.Addr]*session]
	mu sync.Mutex // serialises writers
}

func newIPRouter() *ipRouter {
	r := &ipRouter{}
	m := make(map[netip.Addr]*session)
	r.m.Store(&m)
	return r
}

// lookup returns the session owning dst, or nil.
func (r *ipRouter) lookup(dst netip.Addr) *session {
	return (*r.m.Load())[dst]
}

// add maps each of addrs to s, replacing any previous owner.
func (r *ipRouter) add(s *session, addrs ...netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := *r.m.Load()
	m := make(map[netip.Addr]*session, len(old)+len(addrs))
	for k, v := range old {
		m[k] = v
	}
	for _, a := range addrs {
		m[a] = s
	}
	r.m.Store(&m)
}

// remove unmaps each of addrs if s still owns it.
func (r *ipRouter) remove(s *session, addrs ...netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := *r.m.Load()
	m := make(map[netip.Addr]*session, len(old))
	for k, v := range old {
		m[k] = v
	}
	for _, a := range addrs {
		if m[a] == s {
			delete(m, a)
		}
	}
	r.m.Store(&m)
}

// len returns the number of mapped addresses.
func (r *ipRouter) len() int { return len(*r.m.Load()) }
