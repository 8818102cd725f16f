package verify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/checkpoint"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/dial"
)

// defaultShadowRate caps the shadow when the config sets no rate: it runs
// forever next to production traffic, so "no cap" would mean a verify loop
// at full speed against the old database.
const defaultShadowRate = 1000

// Shadow re-verifies every table continuously inside the daemon: one chunk
// of each table in rotation, paced, with live re-checks, so divergence is
// measured while the stream runs. Each completed pass over a table sets its
// divergence ratio; the counters accumulate over passes.
type Shadow struct {
	cfg  *config.Config
	opts Options
	log  *slog.Logger
	pace *pacer

	checked    *prometheus.CounterVec
	mismatches *prometheus.CounterVec
	ratio      *prometheus.GaugeVec
	passes     *prometheus.CounterVec
	failures   prometheus.Counter

	mu   sync.Mutex
	last map[string]TableReport
}

// NewShadow registers the shadow's metrics on reg. opts is usually
// OptionsFromConfig(cfg); Live is implied.
func NewShadow(cfg *config.Config, opts Options, reg prometheus.Registerer, log *slog.Logger) (*Shadow, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts.Live = true
	if opts.RowsPerSecond == 0 && cfg.Verify.RowsPerSecond == 0 {
		opts.RowsPerSecond = defaultShadowRate
	}
	opts = opts.withDefaults(cfg)
	s := &Shadow{
		cfg: cfg, opts: opts, log: log.With("component", "verify-shadow"),
		pace: newPacer(opts.RowsPerSecond),
		last: map[string]TableReport{},
		checked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tandem_verify_rows_checked_total",
			Help: "Rows compared between source and target by the shadow verifier.",
		}, []string{"table"}),
		mismatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tandem_verify_mismatches_total",
			Help: "Rows found differing (after live re-checks), by kind: different, missing, extra.",
		}, []string{"table", "kind"}),
		ratio: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tandem_verify_divergence_ratio",
			Help: "Differing rows / rows compared over the last complete pass of the table.",
		}, []string{"table"}),
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tandem_verify_passes_total",
			Help: "Complete shadow passes over the table.",
		}, []string{"table"}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tandem_verify_errors_total",
			Help: "Shadow verification attempts that failed and were retried.",
		}),
	}
	for _, c := range []prometheus.Collector{s.checked, s.mismatches, s.ratio, s.passes, s.failures} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register verify metrics: %w", err)
		}
	}
	return s, nil
}

// LastPass returns the report of the latest complete pass of each table.
func (s *Shadow) LastPass() []TableReport {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []TableReport
	for _, tc := range s.cfg.Tables {
		if tr, ok := s.last[targetName(tc)]; ok {
			out = append(out, tr)
		}
	}
	return out
}

func targetName(tc config.TableConfig) string {
	if tc.Target == "" {
		return tc.Source
	}
	return tc.Target
}

// Run verifies until ctx ends. A failure (lost database, stream not
// catching up within WaitTimeout) is logged and retried with backoff: the
// shadow must never take the daemon down.
func (s *Shadow) Run(ctx context.Context) error {
	backoff := time.Second
	for {
		err := s.session(ctx, func() { backoff = time.Second })
		if ctx.Err() != nil {
			return nil
		}
		s.failures.Inc()
		s.log.Warn("shadow verification failed; retrying", "err", err, "in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, time.Minute)
	}
}

// session connects and rotates over the tables until an error.
func (s *Shadow) session(ctx context.Context, progressed func()) error {
	src, err := ConnectFor(ctx, s.cfg.Source.DSN, s.cfg.Name)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	defer src.Close(context.WithoutCancel(ctx))
	tgt, err := ConnectFor(ctx, s.cfg.Target.DSN, s.cfg.Name)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	defer tgt.Close(context.WithoutCancel(ctx))
	e := &env{src: src, tgt: tgt, opts: s.opts, log: s.log, pace: s.pace, store: checkpoint.ForConfig(s.cfg, tgt), name: s.cfg.Name}
	verifiers, err := s.verifiers(ctx, e)
	if err != nil {
		return err
	}
	// Where the stream stood when each table's pass began: the cutover's
	// "changed" check re-verifies a table written after it.
	since := make([]change.LSN, len(verifiers))
	for i := range since {
		since[i] = position(ctx, e)
	}
	for {
		for i, v := range verifiers {
			n, err := v.step(ctx)
			if err != nil {
				return fmt.Errorf("verify %s: %w", v.p.label, err)
			}
			s.checked.WithLabelValues(v.p.target).Add(float64(n))
			if !v.done {
				continue
			}
			if err := s.endPass(ctx, v, since[i]); err != nil {
				return err
			}
			progressed()
			verifiers[i] = newTableVerifier(e, v.p)
			since[i] = position(ctx, e)
		}
	}
}

func (s *Shadow) verifiers(ctx context.Context, e *env) ([]*tableVerifier, error) {
	selected, err := selectTables(s.cfg.Tables, s.opts.Tables)
	if err != nil {
		return nil, err
	}
	var out []*tableVerifier
	for _, i := range selected {
		tc := s.cfg.Tables[i]
		p, err := buildPlan(ctx, e.src, e.tgt, fmt.Sprintf("tables[%d]", i), tc)
		if err != nil {
			return nil, fmt.Errorf("verify %s -> %s: %w", tc.Source, targetName(tc), err)
		}
		out = append(out, newTableVerifier(e, p))
	}
	if len(out) == 0 {
		return nil, errors.New("no table to verify")
	}
	return out, nil
}

// position is the stream's checkpoint; 0 (everything may postdate the
// pass) when it cannot be read.
func position(ctx context.Context, e *env) change.LSN {
	lsn, _, err := e.store.Load(ctx)
	if err != nil {
		return 0
	}
	return lsn
}

// record keeps the pass where the cutover gates read it, on a session of
// its own: the verification sessions are read-only.
func (s *Shadow) record(ctx context.Context, tr *TableReport, since change.LSN) {
	conn, err := dial.Open(ctx, s.cfg.Target.DSN, dial.Short(s.cfg.Name, "verify"))
	if err == nil {
		defer conn.Close(context.WithoutCancel(ctx))
		err = Record(ctx, conn, &Report{Name: s.cfg.Name, Tables: []TableReport{*tr}}, since)
	}
	if err != nil {
		s.log.Warn("could not record the shadow pass for the cutover gates", "table", tr.Target, "err", err)
	}
}

// endPass settles a table's pass and publishes it.
func (s *Shadow) endPass(ctx context.Context, v *tableVerifier, since change.LSN) error {
	tr, err := v.finish(ctx)
	if err != nil {
		return fmt.Errorf("verify %s: %w", v.p.label, err)
	}
	s.record(ctx, tr, since)
	table := v.p.target
	s.checked.WithLabelValues(table).Add(float64(tr.Extra))
	for kind, n := range map[Kind]int64{Different: tr.Different, Missing: tr.Missing, Extra: tr.Extra} {
		s.mismatches.WithLabelValues(table, string(kind)).Add(float64(n))
	}
	ratio := 0.0
	if tr.Compared > 0 {
		ratio = float64(tr.Diffs()) / float64(tr.Compared)
	}
	s.ratio.WithLabelValues(table).Set(ratio)
	s.passes.WithLabelValues(table).Inc()
	s.mu.Lock()
	s.last[table] = *tr
	s.mu.Unlock()
	log := s.log.With("table", v.p.label, "compared", tr.Compared, "different", tr.Different, "missing", tr.Missing, "extra", tr.Extra)
	if tr.Diffs() == 0 {
		log.Info("shadow pass equal")
		return nil
	}
	examples := make([]string, len(tr.Examples))
	for i, d := range tr.Examples {
		examples[i] = d.String()
	}
	log.Warn("shadow pass found differences", "ratio", ratio, "examples", examples)
	return nil
}
