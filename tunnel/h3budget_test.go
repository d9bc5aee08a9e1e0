package tunnel

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/quic-go/quic-go/quicvarint"
)

func TestSourceKey(t *testing.T) {
	for in, want := range map[string]string{
		"198.18.0.7":            "198.18.0.7/32",
		"::ffff:198.18.0.7":     "198.18.0.7/32",
		"2001:db8:1:2:3:4:5:6":  "2001:db8:1:2::/64",
		"fe80::1%eth0":          "fe80::/64",
		"2001:db8:1:2:ffff::99": "2001:db8:1:2::/64",
	} {
		if got := sourceKey(netip.MustParseAddr(in)); got != netip.MustParsePrefix(want) {
			t.Errorf("sourceKey(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestHeaderBudget(t *testing.T) {
	var b headerBudget
	udp := func(s string) net.Addr { return net.UDPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	conn := func(addr string) *connBudget {
		t.Helper()
		c, ok, _ := b.forConn(udp(addr), func() { t.Errorf("connection from %s evicted", addr) })
		if !ok {
			t.Fatalf("connection from %s refused", addr)
		}
		return c
	}
	// One /64: 17 connections of 64 KiB would be over the source's 1 MiB.
	var conns []*connBudget
	for i := range 16 {
		c := conn(fmt.Sprintf("[2001:db8::%x]:443", i+1))
		if err := c.reserve(connHeaderBudget); err != nil {
			t.Fatalf("conn %d: reserve the connection's budget: %v", i, err)
		}
		c.authenticated()
		conns = append(conns, c)
	}
	if err := conns[0].reserve(1); !errors.Is(err, errConnBudget) {
		t.Errorf("over the connection budget: err = %v, want errConnBudget", err)
	}
	c17 := conn("[2001:db8::ffff]:443")
	if err := c17.reserve(1); !errors.Is(err, errSourceBudget) {
		t.Errorf("over the source budget: err = %v, want errSourceBudget", err)
	}
	// Another source is not affected.
	other := conn("198.18.0.1:443")
	if err := other.reserve(connHeaderBudget); err != nil {
		t.Errorf("another source: %v", err)
	}
	conns[0].release(1000)
	if err := c17.reserve(1000); err != nil {
		t.Errorf("after a release: %v", err)
	}
	for _, c := range append(conns, c17, other) {
		c.close()
	}
	if len(b.used) != 0 || len(b.unauth) != 0 || b.pending.Len() != 0 {
		t.Errorf("budget after every connection closed: %v, %v, %d pending, want empty", b.used, b.unauth, b.pending.Len())
	}
}

// A source holds at most maxUnauthConnsPerSource connections that have not
// authenticated; authenticating or closing one frees its place.
func TestUnauthenticatedConnsPerSource(t *testing.T) {
	var b headerBudget
	udp := func(s string) net.Addr { return net.UDPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	admit := func(addr string) (*connBudget, bool) {
		c, ok, evicted := b.forConn(udp(addr), func() { t.Errorf("%s evicted", addr) })
		if evicted {
			t.Errorf("an eviction under the global limit")
		}
		return c, ok
	}
	var conns []*connBudget
	for i := range maxUnauthConnsPerSource {
		c, ok := admit(fmt.Sprintf("[2001:db8:0:1::%x]:1", i+1))
		if !ok {
			t.Fatalf("connection %d refused", i)
		}
		conns = append(conns, c)
	}
	if _, ok := admit("[2001:db8:0:1:ffff::1]:1"); ok {
		t.Fatal("a connection over the source's unauthenticated limit was admitted")
	}
	if _, ok := admit("[2001:db8:0:2::1]:1"); !ok {
		t.Fatal("another /64 was refused")
	}
	conns[0].authenticated()
	conns[0].authenticated() // once is enough
	if _, ok := admit("[2001:db8:0:1::99]:1"); !ok {
		t.Fatal("refused after a connection authenticated")
	}
	if _, ok := admit("[2001:db8:0:1::9a]:1"); ok {
		t.Fatal("admitted twice for one place")
	}
	conns[1].close()
	if _, ok := admit("[2001:db8:0:1::9b]:1"); !ok {
		t.Fatal("refused after a connection closed")
	}
	conns[0].close() // authenticated: frees no second place
	if _, ok := admit("[2001:db8:0:1::9c]:1"); ok {
		t.Fatal("closing an authenticated connection freed an unauthenticated place")
	}
}

// Beyond maxUnauth unauthenticated connections in all, a new one ends the
// oldest unauthenticated one; authenticated connections are never ended.
func TestUnauthenticatedConnsEvictOldest(t *testing.T) {
	b := headerBudget{maxUnauth: 3}
	var ended []int
	admit := func(i int) (*connBudget, bool) {
		c, ok, evicted := b.forConn(net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}), 1)),
			func() { ended = append(ended, i) })
		if !ok {
			t.Fatalf("connection %d refused", i)
		}
		if evicted != (len(ended) > 0 && ended[len(ended)-1] != -1) {
			t.Errorf("connection %d: evicted = %v, ended %v", i, evicted, ended)
		}
		return c, ok
	}
	c1, _ := admit(1)
	admit(2)
	admit(3)
	c1.authenticated() // 1 is no longer a candidate
	admit(4)
	if len(ended) != 0 {
		t.Fatalf("ended %v with room left", ended)
	}
	admit(5)
	if want := []int{2}; !slices.Equal(ended, want) {
		t.Fatalf("ended %v, want %v (the oldest unauthenticated)", ended, want)
	}
	ended = append(ended, -1)
	admit(6)
	if want := []int{2, -1, 3}; !slices.Equal(ended, want) {
		t.Fatalf("ended %v, want %v", ended, want)
	}
	if b.pending.Len() != 3 {
		t.Errorf("%d unauthenticated, want 3", b.pending.Len())
	}
}

// FuzzReadRequestHeaders: whatever the stream holds and whatever the
// budget, readRequestHeaders never reserves more than the bytes that
// arrived (rounded up to the next growth) plus the first chunk, never
// more than the limit, and returns exactly the announced HEADERS payload.
func FuzzReadRequestHeaders(f *testing.F) {
	hdr := func(n uint64, body []byte) []byte {
		return append(quicvarint.Append(quicvarint.Append(nil, frameTypeHeaders), n), body...)
	}
	f.Add(hdr(16383, make([]byte, 64)), 1<<16)
	f.Add(hdr(3, []byte("abc")), 100)
	f.Add(append(appendFrame(nil, 0x21, []byte("grease")), hdr(2000, make([]byte, 2000))...), 1000)
	f.Add(appendFrame(nil, frameTypeData, nil), 0)
	f.Fuzz(func(t *testing.T, b []byte, budget int) {
		reserved := 0
		got, err := readRequestHeaders(bufio.NewReaderSize(bytes.NewReader(b), 16), maxHeaderBytes, func(n int) error {
			if n <= 0 {
				t.Fatalf("reserve(%d)", n)
			}
			if reserved+n > budget {
				return errConnBudget
			}
			reserved += n
			return nil
		})
		if reserved > maxHeaderBytes || reserved > max(2*len(b), headerChunk) {
			t.Fatalf("reserved %d for %d bytes of input", reserved, len(b))
		}
		if err == nil && (len(got) > reserved || !bytes.Contains(b, got)) {
			t.Fatalf("HEADERS of %d bytes with %d reserved, or not from the input", len(got), reserved)
		}
	})
}
