package tunnel

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkUDPForwarder sends 1200-byte datagrams one way from a local
// peer through a UDPForwarder and a Server on loopback QUIC to a sink, at a
// fixed rate per sub-benchmark, and reports what arrived: delivered
// datagrams per second and the loss. Run with -cpuprofile to see where the
// time goes.
func BenchmarkUDPForwarder(b *testing.B) {
	for _, rate := range []int{10000, 20000, 40000} {
		b.Run(fmt.Sprintf("rate=%d", rate), func(b *testing.B) { benchUDPForwarder(b, rate) })
	}
}

func benchUDPForwarder(b *testing.B, rate int) {
	ts := startUDPServer(b, UDPConfig{})
	sink, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(udpTargetAddr, 0)))
	if err != nil {
		b.Fatal(err)
	}
	sink.SetReadBuffer(8 << 20)
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			if _, err := sink.Read(buf); err != nil {
				return
			}
			got.Add(1)
		}
	}()
	qc := ts.dial(b)
	f, err := NewUDPForwarder(UDPForwarderConfig{Conn: qc.Conn, Authority: ts.addr, Token: testToken,
		Forwards: []UDPForward{{Listen: "127.0.0.1:0", Target: sink.LocalAddr().String()}}})
	if err != nil {
		b.Fatal(err)
	}
	runDone := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { runDone <- f.Run(ctx) }()
	defer func() { cancel(); <-runDone; sink.Close(); <-done }()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(f.ListenAddrs()[0]))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.SetWriteBuffer(8 << 20)
	p := make([]byte, 1200)
	c.Write(p) // opens the flow
	for got.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	got.Store(0)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	next := start
	sent := 0
	for b.Loop() {
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		next = next.Add(interval)
		if _, err := c.Write(p); err == nil {
			sent++
		}
	}
	elapsed := time.Since(start)
	time.Sleep(200 * time.Millisecond)
	n := got.Load()
	b.ReportMetric(float64(n)/elapsed.Seconds(), "delivered/s")
	b.ReportMetric(100*float64(int64(sent)-n)/float64(max(sent, 1)), "loss%")
}
