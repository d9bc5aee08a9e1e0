package main

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/masque-vpn/masque/cmd/internal/cli"
	"github.com/prometheus/client_golang/prometheus"
)

// buildInfoMetric gathers masque_build_info from g: its labels and value.
func buildInfoMetric(t *testing.T, g prometheus.Gatherer) (map[string]string, float64) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "masque_build_info" {
			continue
		}
		if len(mf.GetMetric()) != 1 {
			t.Fatalf("masque_build_info has %d series, want 1", len(mf.GetMetric()))
		}
		m := mf.GetMetric()[0]
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		return labels, m.GetGauge().GetValue()
	}
	t.Fatal("no masque_build_info metric")
	return nil, 0
}

// TestBuildInfoMetric: the registry --metrics serves has masque_build_info
// at 1, labeled with this binary's build.
func TestBuildInfoMetric(t *testing.T) {
	b := cli.ReadBuildInfo()
	labels, v := buildInfoMetric(t, newRegistry())
	want := map[string]string{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion}
	if diff := cmp.Diff(want, labels); diff != "" || v != 1 {
		t.Errorf("masque_build_info = %v, want 1; labels mismatch (-want +got):\n%s", v, diff)
	}

	// The labels are the build's, whatever it is.
	other := cli.BuildInfo{Version: "v1.2.3", Revision: "0123456789ab-dirty", GoVersion: "go1.26.8"}
	reg := prometheus.NewRegistry()
	reg.MustRegister(cli.BuildInfoCollector(other, "masqued"))
	labels, v = buildInfoMetric(t, reg)
	want = map[string]string{"version": "v1.2.3", "revision": "0123456789ab-dirty", "goversion": "go1.26.8"}
	if diff := cmp.Diff(want, labels); diff != "" || v != 1 {
		t.Errorf("masque_build_info of %v = %v, want 1; labels mismatch (-want +got):\n%s", other, v, diff)
	}
}
