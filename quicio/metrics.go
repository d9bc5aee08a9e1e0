package quicio

import "github.com/prometheus/client_golang/prometheus"

var (
	descAccepted = prometheus.NewDesc("masque_quic_connections_accepted_total",
		"QUIC connections that completed the handshake.", nil, nil)
	descActive = prometheus.NewDesc("masque_quic_connections",
		"QUIC connections being served now.", nil, nil)
	descHandshaking = prometheus.NewDesc("masque_quic_handshakes_in_flight",
		"QUIC handshakes started and not yet finished.", nil, nil)
	descRefused = prometheus.NewDesc("masque_quic_connections_refused_total",
		"QUIC connections refused, by reason: busy (max_conns), per_source "+
			"(max_conns_per_source), handshake_rate (max_handshake_rate), hook.",
		[]string{"reason"}, nil)
	descRetries = prometheus.NewDesc("masque_quic_retries_total",
		"Retry packets asked for: peers that had to prove their address first.", nil, nil)
)

// Collector returns the server's admission metrics for a Prometheus
// registry.
func (s *Server) Collector() prometheus.Collector { return collector{s} }

type collector struct{ s *Server }

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAccepted, descActive, descHandshaking, descRefused, descRetries} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	ch <- prometheus.MustNewConstMetric(descAccepted, prometheus.CounterValue, float64(st.Accepted))
	ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(st.Active))
	ch <- prometheus.MustNewConstMetric(descHandshaking, prometheus.GaugeValue, float64(st.Handshaking))
	for _, r := range []struct {
		reason string
		n      uint64
	}{
		{"busy", st.RejectedBusy},
		{"per_source", st.RejectedSource},
		{"handshake_rate", st.RejectedRate},
		{"hook", st.RejectedByHooks},
	} {
		ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(r.n), r.reason)
	}
	ch <- prometheus.MustNewConstMetric(descRetries, prometheus.CounterValue, float64(st.RetriesAsked))
}
