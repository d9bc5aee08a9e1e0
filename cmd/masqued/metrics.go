package main

import (
	"github.com/masque-vpn/masque/cmd/internal/cli"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// newRegistry returns the registry that --metrics serves: cs (the
// server's own collectors), the build information, and the Go runtime's
// and the process's metrics.
func newRegistry(cs ...prometheus.Collector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(cs...)
	reg.MustRegister(cli.BuildInfoCollector(cli.ReadBuildInfo(), "masqued"), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}
