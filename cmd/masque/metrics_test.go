package main

import (
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

// TestClientMetrics: the scrape carries the status snapshot's figures.
func TestClientMetrics(t *testing.T) {
	st := Status{State: "reconnecting", TxBytes: 1500, RxPackets: 7, Reconnects: 2, RTTms: 12.5,
		Drops: map[string]uint64{"source_bogus": 3}, Refused: map[string]uint64{"dns_servers": 4}}
	addr, stop, err := serveMetrics("127.0.0.1:0", func() Status { return st }, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if _, _, err := serveMetrics("127.0.0.1:bad", func() Status { return st }, slog.New(slog.DiscardHandler)); err == nil || !strings.HasPrefix(err.Error(), "--metrics 127.0.0.1:bad: ") {
		t.Errorf("serveMetrics(bad address) = %v", err)
	}
	rsp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer rsp.Body.Close()
	b, _ := io.ReadAll(rsp.Body)
	for _, want := range []string{
		`masque_client_state{state="reconnecting"} 1`,
		`masque_client_state{state="up"} 0`,
		`masque_client_bytes_total{direction="tx"} 1500`,
		`masque_client_packets_total{direction="rx"} 7`,
		`masque_client_drops_total{reason="source_bogus"} 3`,
		`masque_client_refused_total{kind="dns_servers"} 4`,
		`masque_client_reconnects_total 2`,
		`masque_client_rtt_seconds 0.0125`,
		`go_goroutines`,
		`# TYPE masque_build_info gauge`,
	} {
		if !strings.Contains(string(b), want+"\n") && !strings.Contains(string(b), want+" ") {
			t.Errorf("scrape lacks %q", want)
		}
	}
}
