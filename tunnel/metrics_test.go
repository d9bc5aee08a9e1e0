package tunnel

import (
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/masque-vpn/masque/policy"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/quic-go/quic-go/http3"
)

var (
	snakeCase  = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	metricName = regexp.MustCompile(`^masque_[a-z0-9]+_[a-z0-9_]+$`) // STYLE.md §5
)

func TestDropReasonNames(t *testing.T) {
	seen := map[string]dropReason{}
	for r := range numDropReasons {
		name := r.String()
		if !snakeCase.MatchString(name) {
			t.Errorf("dropReason(%d).String() = %q, want a snake_case label", r, name)
		}
		if prev, dup := seen[name]; dup {
			t.Errorf("dropReason %d and %d are both %q", prev, r, name)
		}
		seen[name] = r
	}
	for what, labels := range map[string][]string{
		"refusal":      refusalNames[:],
		"capsule drop": capsuleDropNames[:],
		"unrouted":     unroutedNames[unroutedNone+1:],
		"connection error": func() []string {
			var l []string
			for i := range numConnErrors {
				l = append(l, connErrorLabel(i))
			}
			return l
		}(),
	} {
		names := map[string]bool{}
		for r, name := range labels {
			if !snakeCase.MatchString(name) || names[name] {
				t.Errorf("%s %d name %q is not a unique snake_case label", what, r, name)
			}
			names[name] = true
		}
	}
}

func TestCollector(t *testing.T) {
	var c counters
	c.drop(dropSourceSpoof)
	c.drop(dropSourceSpoof)
	c.drop(dropMalformed)
	c.rxPackets.Add(3)
	c.rxBytes.Add(300)
	c.txPackets.Add(5)
	c.txBytes.Add(500)
	c.icmpSent.Add(1)
	c.sessions.Add(2)
	c.sessionsTotal.Add(7)
	c.refused[refuseAuth].Add(4)
	// Three addresses leased, one of them released (still reserved for its
	// identity); no IPv6 pool, so no ipv6 series.
	pool4, err := policy.NewPool(netip.MustParsePrefix("100.64.0.0/24"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []policy.Identity{"alice", "bob", "carol"} {
		a, err := pool4.Acquire(id)
		if err != nil {
			t.Fatal(err)
		}
		if id == "bob" {
			pool4.Release(a)
		}
	}
	c.capsuleDrops[capsuleDropMalformed].Add(6)
	c.datagramCapsules.Add(8)
	c.unrouted[unroutedNotFound].Add(9)
	c.connErrors[connErrorIndex(http3.ErrCodeDatagramError)].Add(10)

	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(collector{c: &c, pool4: pool4}); err != nil {
		t.Fatalf("Register: %v", err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		name := mf.GetName()
		if !metricName.MatchString(name) {
			t.Errorf("metric %s is not named masque_<component>_<thing>", name)
		}
		if mf.GetType() == dto.MetricType_COUNTER && !strings.HasSuffix(name, "_total") {
			t.Errorf("counter %s does not end in _total", name)
		}
		for _, m := range mf.GetMetric() {
			key := name
			for _, l := range m.GetLabel() {
				key += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			switch {
			case m.GetCounter() != nil:
				got[key] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				got[key] = m.GetGauge().GetValue()
			}
		}
	}
	want := map[string]float64{
		"masque_tunnel_dropped_packets_total{reason=source_spoof}":       2,
		"masque_tunnel_dropped_packets_total{reason=malformed}":          1,
		"masque_tunnel_dropped_packets_total{reason=destination_denied}": 0,
		"masque_tunnel_packets_total{direction=rx}":                      3,
		"masque_tunnel_packets_total{direction=tx}":                      5,
		"masque_tunnel_bytes_total{direction=rx}":                        300,
		"masque_tunnel_bytes_total{direction=tx}":                        500,
		"masque_tunnel_icmp_errors_sent_total":                           1,
		"masque_tunnel_sessions":                                         2,
		"masque_tunnel_sessions_total":                                   7,
		"masque_tunnel_refused_requests_total{reason=unauthenticated}":   4,
		"masque_tunnel_refused_requests_total{reason=pool_exhausted}":    0,
		"masque_pool_addresses_in_use{family=ipv4}":                      2,
		"masque_pool_addresses_reserved{family=ipv4}":                    3,
		"masque_tunnel_dropped_capsules_total{reason=malformed}":         6,
		"masque_tunnel_dropped_capsules_total{reason=unknown_type}":      0,
		"masque_tunnel_datagram_capsules_total":                          8,
		"masque_tunnel_unrouted_requests_total{reason=not_found}":        9,
		"masque_tunnel_connection_errors_total{code=datagram_error}":     10,
		"masque_tunnel_connection_errors_total{code=other}":              0,
		"masque_tunnel_unrouted_requests_total{reason=headers}":          0,
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, w)
		}
	}
	for k := range got {
		if strings.Contains(k, "family=ipv6") {
			t.Errorf("%s exported without an IPv6 pool", k)
		}
	}
	// Every reason is exported, even at zero, so dashboards see the series.
	for r := range numDropReasons {
		if _, ok := got["masque_tunnel_dropped_packets_total{reason="+r.String()+"}"]; !ok {
			t.Errorf("drop reason %s not exported", r)
		}
	}
}
