package quicio

import "testing"

func TestConnIDGenerator(t *testing.T) {
	for _, id := range []byte{0, 7, 0xff} {
		g := &connIDGenerator{serverID: id}
		if g.ConnectionIDLen() != ConnIDLen {
			t.Fatalf("ConnectionIDLen() = %d, want %d", g.ConnectionIDLen(), ConnIDLen)
		}
		seen := map[string]bool{}
		for range 100 {
			c, err := g.GenerateConnectionID()
			if err != nil {
				t.Fatalf("GenerateConnectionID: %v", err)
			}
			b := c.Bytes()
			if len(b) != g.ConnectionIDLen() {
				t.Fatalf("connection ID %x has length %d, want %d", b, len(b), g.ConnectionIDLen())
			}
			if b[0] != id {
				t.Fatalf("connection ID %x starts with %#x, want server ID %#x", b, b[0], id)
			}
			if seen[string(b[1:])] {
				t.Fatalf("connection ID %x repeated", b)
			}
			seen[string(b[1:])] = true
		}
	}
	// The random part is not constant: no byte position is the same in
	// every ID (probability of a false failure: 14 * 2^-792).
	g := &connIDGenerator{serverID: 1}
	first, _ := g.GenerateConnectionID()
	varies := make([]bool, connIDLen)
	for range 100 {
		c, _ := g.GenerateConnectionID()
		for i := 1; i < connIDLen; i++ {
			varies[i] = varies[i] || c.Bytes()[i] != first.Bytes()[i]
		}
	}
	if varies[0] {
		t.Fatal("server ID byte varies")
	}
	for i := 1; i < connIDLen; i++ {
		if !varies[i] {
			t.Errorf("byte %d of the connection ID never changes", i)
		}
	}
}
