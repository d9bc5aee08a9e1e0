package main

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// newRegistry returns the registry that --metrics serves: cs (the
// server's own collectors), the build information, and the Go runtime's
// and the process's metrics.
func newRegistry(cs ...prometheus.Collector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(cs...)
	reg.MustRegister(buildInfoCollector(readBuildInfo()), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// buildInfoCollector is the masque_build_info gauge: always 1, its labels
// say which build is running, so that a dashboard can tell servers on
// different builds apart.
func buildInfoCollector(b buildInfo) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "masque_build_info",
		Help:        "A metric with a constant 1 value labeled by the version, VCS revision and Go version masqued was built from.",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion},
	}, func() float64 { return 1 })
}
