// Package metrics defines tandem's Prometheus metrics on a private registry
// and serves them with /healthz.
package metrics

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tandem-migrate/tandem/internal/version"
)

// Stream holds the streaming metrics.
type Stream struct {
	LagBytes       prometheus.Gauge
	LagSeconds     prometheus.Gauge
	RetainedBytes  prometheus.Gauge
	CheckpointLSN  prometheus.Gauge
	ReceivedLSN    prometheus.Gauge
	Changes        *prometheus.CounterVec
	Transactions   prometheus.Counter
	TargetCommits  prometheus.Counter
	ApplyErrors    prometheus.Counter
	Reconnects     prometheus.Counter
	ApplyDuration  prometheus.Histogram
	TruncatesTotal prometheus.Counter
	Skipped        *prometheus.CounterVec
	Streaming      prometheus.Gauge
}

// NewRegistry returns a private registry with Go and process collectors
// and tandem_build_info.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), newBuildInfo(version.Get()))
	return reg
}

// NewStream registers the streaming metrics on reg.
func NewStream(reg prometheus.Registerer) *Stream {
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &Stream{
		LagBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tandem_replication_lag_bytes",
			Help: "WAL bytes between the source's current position and what is durably applied."}),
		LagSeconds: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tandem_replication_lag_seconds",
			Help: "How long the oldest source WAL not yet applied has existed (sampled every second); 0 when caught up. While the old database cannot be read it keeps growing from the last contact."}),
		RetainedBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tandem_slot_retained_wal_bytes",
			Help: "WAL the replication slot keeps on the source's disk."}),
		CheckpointLSN: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tandem_checkpoint_lsn",
			Help: "Last durably checkpointed source LSN, as a number."}),
		ReceivedLSN: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tandem_received_lsn",
			Help: "End of the last WAL data received, as a number."}),
		Changes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tandem_changes_applied_total",
			Help: "Row changes applied to the target, by source table and operation."}, []string{"table", "op"}),
		Transactions: prometheus.NewCounter(prometheus.CounterOpts{Name: "tandem_transactions_applied_total",
			Help: "Source transactions applied."}),
		TargetCommits: prometheus.NewCounter(prometheus.CounterOpts{Name: "tandem_target_commits_total",
			Help: "Target transactions committed (each may hold several source transactions)."}),
		ApplyErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "tandem_apply_errors_total",
			Help: "Errors while streaming or applying (each followed by a retry or a stop)."}),
		Reconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "tandem_reconnects_total",
			Help: "Times the pipeline restarted from its checkpoint after an error."}),
		ApplyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tandem_target_commit_seconds",
			Help: "Time to send and commit one target transaction's last batch.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		TruncatesTotal: prometheus.NewCounter(prometheus.CounterOpts{Name: "tandem_truncates_applied_total",
			Help: "TRUNCATE messages applied."}),
		Skipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tandem_changes_skipped_total",
			Help: "Row changes received and deliberately not applied, by source table and reason: not_configured (a table in the publication that no tables[] entry maps), already_applied (a transaction at or before the checkpoint, sent again after a restart)."}, []string{"table", "reason"}),
	}
	f(m.LagBytes)
	f(m.LagSeconds)
	f(m.RetainedBytes)
	f(m.CheckpointLSN)
	f(m.ReceivedLSN)
	f(m.Changes)
	f(m.Transactions)
	f(m.TargetCommits)
	f(m.ApplyErrors)
	f(m.Reconnects)
	f(m.ApplyDuration)
	f(m.TruncatesTotal)
	f(m.Skipped)
	m.Streaming = prometheus.NewGauge(prometheus.GaugeOpts{Name: "tandem_streaming",
		Help: "1 while the replication stream is connected and applying, 0 while tandem starts, retries or has stopped."})
	f(m.Streaming)
	return m
}

// Health is set by the pipeline. Ready (/healthz) means streaming and not
// further behind than a bound; live (/livez) means its loops make
// progress, which they do while retrying an outage too.
type Health struct {
	ok     atomic.Bool
	reason atomic.Value
	behind atomic.Value // why a streaming tandem is not ready; "" when caught up
	Live   Liveness
}

// Set records whether tandem streams.
func (h *Health) Set(ok bool, reason string) {
	h.ok.Store(ok)
	h.reason.Store(reason)
}

// SetBehind records why tandem is too far behind to be ready ("" when it
// is not).
func (h *Health) SetBehind(reason string) { h.behind.Store(reason) }

// Ready reports readiness and, when not ready, why.
func (h *Health) Ready() (bool, string) {
	if !h.ok.Load() {
		reason, _ := h.reason.Load().(string)
		return false, reason
	}
	if behind, _ := h.behind.Load().(string); behind != "" {
		return false, behind
	}
	return true, ""
}

// Serve serves /metrics, /healthz (readiness) and /livez (liveness) until
// ctx ends.
func Serve(ctx context.Context, listen string, reg *prometheus.Registry, health *Health, extra map[string]http.Handler, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if ok, reason := health.Ready(); !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("unhealthy: " + reason + "\n"))
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("/livez", &health.Live)
	for path, h := range extra {
		mux.Handle(path, h)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	log.Info("metrics listening", "addr", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-errc
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}
