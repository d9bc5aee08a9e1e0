package main

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/masque-vpn/masque/cmd/internal/cli"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The client's metrics (masque up --metrics ADDR), read from the same
// snapshot masque status prints.
var (
	descState      = prometheus.NewDesc("masque_client_state", "1 for the tunnel's current state (connecting, up, reconnecting), 0 for the others.", []string{"state"}, nil)
	descBytes      = prometheus.NewDesc("masque_client_bytes_total", "Inner bytes through the tunnel, by direction (tx: to the server).", []string{"direction"}, nil)
	descPackets    = prometheus.NewDesc("masque_client_packets_total", "Inner packets through the tunnel, by direction.", []string{"direction"}, nil)
	descDrops      = prometheus.NewDesc("masque_client_drops_total", "Packets the client dropped, by reason.", []string{"reason"}, nil)
	descRefused    = prometheus.NewDesc("masque_client_refused_total", "What the client refused from the server's capsules, by kind.", []string{"kind"}, nil)
	descReconnects = prometheus.NewDesc("masque_client_reconnects_total", "Sessions the run opened after its first.", nil, nil)
	descRTT        = prometheus.NewDesc("masque_client_rtt_seconds", "The QUIC connection's smoothed RTT.", nil, nil)
	descUptime     = prometheus.NewDesc("masque_client_session_uptime_seconds", "How long the current session has been up.", nil, nil)
)

var clientStates = []string{"connecting", "up", "reconnecting"}

// clientCollector is a Prometheus collector over a status snapshot.
type clientCollector struct{ status func() Status }

func (c clientCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descState, descBytes, descPackets, descDrops, descRefused, descReconnects, descRTT, descUptime} {
		ch <- d
	}
}

func (c clientCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.status()
	for _, s := range clientStates {
		v := 0.0
		if s == st.State {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, v, s)
	}
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(st.TxBytes), "tx")
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(st.RxBytes), "rx")
	ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(st.TxPackets), "tx")
	ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(st.RxPackets), "rx")
	for r, n := range st.Drops {
		ch <- prometheus.MustNewConstMetric(descDrops, prometheus.CounterValue, float64(n), r)
	}
	for k, n := range st.Refused {
		ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(n), k)
	}
	ch <- prometheus.MustNewConstMetric(descReconnects, prometheus.CounterValue, float64(st.Reconnects))
	ch <- prometheus.MustNewConstMetric(descRTT, prometheus.GaugeValue, st.RTTms/1000)
	ch <- prometheus.MustNewConstMetric(descUptime, prometheus.GaugeValue, st.UptimeSeconds)
}

// serveMetrics serves the client's metrics on addr (/metrics) until the
// returned function is called, and returns the address it listens on. A Go collector and a process collector
// come along, as on masqued.
func serveMetrics(addr string, status func() Status, logger *slog.Logger) (string, func(), error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(clientCollector{status}, prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}),
		cli.BuildInfoCollector(cli.ReadBuildInfo(), "masque"))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, usagef("--metrics %s: %v", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Warn("metrics server ended", "err", err)
		}
	}()
	logger.Info("metrics", "addr", ln.Addr().String())
	return ln.Addr().String(), func() { srv.Close(); <-done }, nil
}
