// Package pipeline runs one migration's stream: decoder -> transform ->
// sink, with the checkpoint as the single source of truth for where to
// resume. Any retryable failure tears everything down and starts again from
// the checkpoint, which is always correct because the slot is never
// confirmed beyond it.
package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/tandem-migrate/tandem/pkg/backfill"
	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/checkpoint"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/decoder"
	"github.com/tandem-migrate/tandem/pkg/metrics"
)

// Pipeline is a long-lived stream for one config.
type Pipeline struct {
	cfg    *config.Config
	base   *slog.Logger // for components' own child loggers
	log    *slog.Logger
	m      *metrics.Stream
	Health metrics.Health
	// Backfill is the live control of the copy (limits, pause); it
	// outlives reconnects.
	Backfill *backfill.Control
	bf       *backfill.Metrics

	// processed is the LSN up to which everything received is handled
	// (committed, or known to hold nothing for us); lag is measured to it.
	processed atomic.Uint64
	// streamed is set once a slot was in use, so a slot created on a later
	// retry is recognised as a loss, not a fresh start.
	streamed bool
	lagMu    sync.Mutex
	samples  []walSample
}

type walSample struct {
	at  time.Time
	lsn change.LSN
}

// New builds a pipeline; reg receives its metrics.
func New(cfg *config.Config, log *slog.Logger, reg prometheus.Registerer) *Pipeline {
	p := &Pipeline{cfg: cfg, base: log, log: log.With("component", "pipeline"), m: metrics.NewStream(reg), bf: backfill.NewMetrics(reg)}
	p.Backfill = backfill.NewControl(backfill.LimitsOf(cfg.Backfill))
	p.Health.Set(false, "starting")
	return p
}

// BackfillMetrics exposes the backfill metrics (for tests and embedding).
func (p *Pipeline) BackfillMetrics() *backfill.Metrics { return p.bf }

// Metrics exposes the stream metrics (for tests and embedding).
func (p *Pipeline) Metrics() *metrics.Stream { return p.m }

// Run streams until ctx is cancelled (clean stop: returns nil) or a fatal
// error. Retryable errors restart from the checkpoint with backoff.
func (p *Pipeline) Run(ctx context.Context) error {
	backoff := p.cfg.Apply.RetryMin
	for {
		started := time.Now()
		err := p.runOnce(ctx)
		if ctx.Err() != nil {
			p.Health.Set(false, "stopped")
			return nil
		}
		p.m.ApplyErrors.Inc()
		if !Retryable(err) {
			p.Health.Set(false, err.Error())
			return err
		}
		if time.Since(started) > time.Minute {
			backoff = p.cfg.Apply.RetryMin
		}
		p.Health.Set(false, err.Error())
		p.log.Warn("stream interrupted; resuming from checkpoint", "err", config.RedactDSN(err.Error()), "retry_in", backoff)
		p.m.Reconnects.Inc()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, p.cfg.Apply.RetryMax)
	}
}

// SourceTables lists the distinct configured source tables.
func SourceTables(cfg *config.Config) []string {
	var out []string
	seen := map[string]bool{}
	for _, t := range cfg.Tables {
		s, n, _ := config.SplitQualified(t.Source)
		q := s + "." + n
		if !seen[q] {
			seen[q] = true
			out = append(out, q)
		}
	}
	return out
}

func connect(ctx context.Context, dsn, which string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("connect to %s database: %w", which, err)
	}
	return conn, nil
}

func (p *Pipeline) runOnce(ctx context.Context) error {
	cfg := p.cfg
	src, err := connect(ctx, cfg.Source.DSN, "source")
	if err != nil {
		return err
	}
	defer src.Close(context.Background())
	tgt, err := connect(ctx, cfg.Target.DSN, "target")
	if err != nil {
		return err
	}
	defer tgt.Close(context.Background())
	if err := prepareTarget(ctx, tgt, cfg.Apply); err != nil {
		return err
	}

	tables, err := Plan(ctx, cfg, src, tgt)
	if err != nil {
		return &FatalError{Err: err}
	}
	if err := checkpoint.EnsureSchema(ctx, tgt); err != nil {
		return err
	}
	if err := decoder.EnsurePublication(ctx, src, cfg.Source.Publication, SourceTables(cfg), *cfg.Source.CreatePublication); err != nil {
		return &FatalError{Err: err}
	}
	slot, created, err := decoder.EnsureSlot(ctx, src, cfg.Source.Slot)
	if err != nil {
		return err
	}
	if created {
		if p.streamed {
			// The slot existed when this process started streaming; it was
			// dropped underneath us, and a new one would silently skip the
			// changes in between.
			return &FatalError{Err: fmt.Errorf("replication slot %s disappeared while tandem was running (dropped by teardown or by hand?); the changes since the last checkpoint are gone from the source: start over (tandem teardown, empty the target) rather than resume", cfg.Source.Slot)}
		}
		p.log.Info("created replication slot", "slot", cfg.Source.Slot, "at", slot.ConfirmedFlush)
	}
	p.streamed = true
	store := checkpoint.ForConfig(cfg, tgt)
	pos, ok, err := store.Load(ctx)
	if err != nil {
		return err
	}
	switch {
	case !ok:
		pos = slot.ConfirmedFlush
		p.log.Info("no checkpoint yet; starting at the slot's position", "lsn", pos)
	case slot.ConfirmedFlush > pos:
		return &FatalError{Err: fmt.Errorf("slot %s is confirmed up to %s but the checkpoint is at %s: changes in between were consumed by something else and are not on the target; drop the slot and the target data (tandem teardown) and start over, or restore the matching checkpoint", cfg.Source.Slot, slot.ConfirmedFlush, pos)}
	}
	p.processed.Store(uint64(pos))
	p.m.CheckpointLSN.Set(float64(pos))

	poll, err := connect(ctx, cfg.Source.DSN, "source")
	if err != nil {
		return err
	}
	defer poll.Close(context.Background())

	dec := decoder.New(decoder.Options{DSN: cfg.Source.DSN, Slot: cfg.Source.Slot, Publication: cfg.Source.Publication,
		StatusInterval: 2 * time.Second, Log: p.base.With("component", "decoder")})
	groupable, err := Groupable(ctx, tgt, tables)
	if err != nil {
		return err
	}
	a := newApplier(p, tables, src, tgt, store, dec, pos, groupable)
	// Deep enough that the decoder keeps reading while the applier waits on
	// the target: at 100k changes/s a 50 ms flush is 5000 events.
	events := make(chan any, 16384)

	var jobs []*backfill.Job
	if cfg.Backfill.IsEnabled() {
		if jobs, err = p.backfillJobs(ctx, tables, tgt); err != nil {
			return err
		}
		a.tracker = backfill.NewTracker()
	}

	// The applier's shutdown must outlive the decoder's: it commits what is
	// complete after the stream stops.
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return dec.Run(gctx, pos, events) })
	g.Go(func() error { return a.run(gctx, ctx, events) })
	g.Go(func() error { return p.pollLag(gctx, poll, dec.Received) })
	if len(jobs) > 0 {
		r := &backfill.Runner{Name: cfg.Name, DSN: cfg.Source.DSN, Workers: cfg.Backfill.Workers, Cfg: cfg.Backfill,
			Control: p.Backfill, Tracker: a.tracker, Metrics: p.bf, Log: p.base.With("component", "backfill"), Lag: p.Lag}
		g.Go(func() error { return r.Run(gctx, jobs) })
	}
	p.Health.Set(true, "")
	return g.Wait()
}

// pollLag samples the source's WAL position to turn "how far behind" into
// bytes and seconds, and reports the slot's retained WAL.
func (p *Pipeline) pollLag(ctx context.Context, conn *pgx.Conn, received func() change.LSN) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		var cur change.LSN
		var retained int64
		err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn(),
			COALESCE((SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1), 0)`,
			p.cfg.Source.Slot).Scan(&cur, &retained)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("poll source lag: %w", err)
		}
		p.m.RetainedBytes.Set(float64(retained))
		p.m.ReceivedLSN.Set(float64(received()))
		p.observeLag(time.Now(), cur)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (p *Pipeline) observeLag(now time.Time, cur change.LSN) {
	p.lagMu.Lock()
	defer p.lagMu.Unlock()
	p.samples = append(p.samples, walSample{at: now, lsn: cur})
	processed := change.LSN(p.processed.Load())
	// Drop samples the stream has passed; the oldest remaining one says
	// since when unprocessed WAL has existed.
	i := 0
	for i < len(p.samples) && p.samples[i].lsn <= processed {
		i++
	}
	p.samples = p.samples[i:]
	if len(p.samples) > 3600 {
		p.samples = p.samples[len(p.samples)-3600:]
	}
	lagBytes := float64(0)
	if cur > processed {
		lagBytes = float64(cur - processed)
	}
	p.m.LagBytes.Set(lagBytes)
	if len(p.samples) <= 1 {
		// Only the sample just taken is ahead: the lag is under one poll.
		p.m.LagSeconds.Set(0)
		return
	}
	p.m.LagSeconds.Set(now.Sub(p.samples[0].at).Seconds())
}

// Lag is the current replication lag estimate.
func (p *Pipeline) Lag() time.Duration {
	p.lagMu.Lock()
	defer p.lagMu.Unlock()
	if len(p.samples) <= 1 {
		return 0
	}
	return time.Since(p.samples[0].at)
}

func (p *Pipeline) backfillJobs(ctx context.Context, tables []*Table, tgt *pgx.Conn) ([]*backfill.Job, error) {
	progress, err := backfill.LoadProgress(ctx, tgt, p.cfg.Name)
	if err != nil {
		return nil, err
	}
	var jobs []*backfill.Job
	for i, t := range tables {
		j, err := backfill.NewJob(t.Field, t.Source, t.Mapping, i)
		if err != nil {
			return nil, &FatalError{Err: err}
		}
		j.Progress = progress[j.Mapping.SourceName+" -> "+j.Mapping.TargetName]
		jobs = append(jobs, j)
	}
	return jobs, nil
}

func (p *Pipeline) markProcessed(lsn change.LSN) {
	for {
		cur := p.processed.Load()
		if uint64(lsn) <= cur || p.processed.CompareAndSwap(cur, uint64(lsn)) {
			return
		}
	}
}
