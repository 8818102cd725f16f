package lifecycle

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics shows the phase on the lag dashboard, beside the lag of the
// direction that phase runs.
type Metrics struct {
	phase       *prometheus.GaugeVec
	changed     prometheus.Gauge
	unavailable prometheus.Gauge
}

// NewMetrics registers the lifecycle metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		phase: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tandem_phase",
			Help: "1 for the phase the migration is in (forward, cutting_over, cutover, rolling_back), 0 for the others."}, []string{"phase"}),
		changed: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tandem_phase_changed_timestamp_seconds",
			Help: "Unix time the phase last changed (0 before the first cutover)."}),
		unavailable: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tandem_cutover_write_unavailable_seconds",
			Help: "Time from fence to ready of the last cutover or rollback: how long the applications could not write."}),
	}
	reg.MustRegister(m.phase, m.changed, m.unavailable)
	m.Set(State{Phase: Forward})
	return m
}

// Set shows s.
func (m *Metrics) Set(s State) {
	for _, p := range Phases {
		v := 0.0
		if p == s.Phase {
			v = 1
		}
		m.phase.WithLabelValues(string(p)).Set(v)
	}
	if !s.Changed.IsZero() {
		m.changed.Set(float64(s.Changed.UnixNano()) / 1e9)
	}
	m.unavailable.Set(s.Unavailable.Seconds())
}
