package sink

import "github.com/prometheus/client_golang/prometheus"

// JetStreamMetrics are the JetStream sink's metrics.
type JetStreamMetrics struct {
	Published  *prometheus.CounterVec
	Acks       prometheus.Counter
	Errors     prometheus.Counter
	Pending    prometheus.Gauge
	AckSeconds prometheus.Histogram
	StreamLSN  prometheus.Gauge
	Connected  prometheus.Gauge
}

// NewJetStreamMetrics registers the JetStream sink's metrics on reg.
func NewJetStreamMetrics(reg prometheus.Registerer) *JetStreamMetrics {
	m := &JetStreamMetrics{
		Published: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tandem_nats_published_total",
			Help: "Messages sent to the JetStream stream, by table (as published) and op; a message sent again after a retry counts again."}, []string{"table", "op"}),
		Acks: prometheus.NewCounter(prometheus.CounterOpts{Name: "tandem_nats_acks_total",
			Help: "PubAcks received: messages the stream holds durably."}),
		Errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "tandem_nats_publish_errors_total",
			Help: "Publishes that failed (server unreachable, stream full, no ack in time); each is followed by a retry from the checkpoint."}),
		Pending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tandem_nats_pending_acks",
			Help: "Messages published and not yet acknowledged."}),
		AckSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tandem_nats_ack_seconds",
			Help:    "Time from publishing a message to its PubAck.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}),
		StreamLSN: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tandem_nats_stream_lsn",
			Help: "Commit LSN of the last source transaction wholly acknowledged by the stream, as a number."}),
		Connected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tandem_nats_connected",
			Help: "1 while the publishing connection to NATS is open."}),
	}
	reg.MustRegister(m.Published, m.Acks, m.Errors, m.Pending, m.AckSeconds, m.StreamLSN, m.Connected)
	return m
}
