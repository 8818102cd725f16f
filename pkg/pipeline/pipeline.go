// Package pipeline runs one migration's stream: decoder -> transform ->
// sink, with the checkpoint as the single source of truth for where to
// resume. Any retryable failure tears everything down and starts again from
// the checkpoint, which is always correct because the slot is never
// confirmed beyond it.
//
// It owns the wiring and the order of commits: pipeline.go connects and
// runs the parts, applier.go groups source transactions into target
// transactions and commits them with their checkpoint, relations.go routes
// each source relation to its mappings (partitions, renames, shape
// changes), chunk.go writes backfill chunks at their high watermark,
// fetch.go reads back rows an update could not find, plan.go and
// preflight.go check a config against both databases, lag.go and lock.go
// measure lag and keep one daemon per migration. Source and target are
// roles, not directions: nothing here assumes which database is older.
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
	"github.com/tandem-migrate/tandem/pkg/dial"
	"github.com/tandem-migrate/tandem/pkg/metrics"
	"github.com/tandem-migrate/tandem/pkg/sink"
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
	jsm      *sink.JetStreamMetrics

	// processed is the LSN up to which everything received is handled
	// (committed, or known to hold nothing for us); lag is measured to it.
	processed atomic.Uint64
	// streamed is set once a slot was in use, so a slot created on a later
	// retry is recognised as a loss, not a fresh start.
	streamed bool
	// dec is the current attempt's decoder (nil before the first).
	dec atomic.Pointer[decoder.Decoder]
	// attempt says what the current attempt achieved, for health and the
	// retry backoff.
	attempt attempt
	// beat is the retry loop's heartbeat while it (not the stream) runs.
	beat *metrics.Beat

	lagMu   sync.Mutex
	samples []walSample // source positions not yet processed, oldest first
	current change.LSN  // the source's last known position
	contact time.Time   // last successful poll of the source
	// slotStatus is the slot's last wal_status seen (poller only).
	slotStatus string
}

// New builds a pipeline; reg receives its metrics.
func New(cfg *config.Config, log *slog.Logger, reg prometheus.Registerer) *Pipeline {
	p := &Pipeline{cfg: cfg, base: log, log: log.With("component", "pipeline"), m: metrics.NewStream(reg), bf: backfill.NewMetrics(reg), jsm: sink.NewJetStreamMetrics(reg)}
	p.Backfill = backfill.NewControl(backfill.LimitsOf(cfg.Backfill))
	p.Health.Set(false, "starting")
	return p
}

// Use replaces the config before the next Run: the reverse stream's is
// derived from both catalogs when cutover makes it needed, long after its
// metrics were registered.
func (p *Pipeline) Use(cfg *config.Config) { p.cfg = cfg }

// BackfillMetrics exposes the backfill metrics (for tests and embedding).
func (p *Pipeline) BackfillMetrics() *backfill.Metrics { return p.bf }

// Metrics exposes the stream metrics (for tests and embedding).
func (p *Pipeline) Metrics() *metrics.Stream { return p.m }

// Run streams until ctx is cancelled (clean stop: returns nil) or a fatal
// error. Retryable errors restart from the checkpoint with backoff.
func (p *Pipeline) Run(ctx context.Context) error {
	// Every call tandem makes is bounded by one of these, so a loop that
	// goes longer without a beat is stuck, not waiting on a database.
	p.Health.Live.SetStale(3*p.cfg.Apply.StatementTimeout + p.cfg.Source.ReceiveTimeout)
	p.beat = p.Health.Live.Join("pipeline")
	defer func() { p.beat.Leave() }()
	// A slot found missing in a later Run is a new cutover's, not a loss.
	p.streamed = false

	p.lagMu.Lock()
	p.contact = time.Now() // lag counts from here if the old database is never reached
	p.lagMu.Unlock()
	pctx, stopPoll := context.WithCancel(ctx)
	var pollers sync.WaitGroup
	pollers.Add(2)
	go func() { defer pollers.Done(); p.pollSource(pctx) }()
	go func() { defer pollers.Done(); p.reportLag(pctx) }()
	defer func() { stopPoll(); pollers.Wait() }()

	lock := newMigrationLock(p.cfg, p.log)
	defer lock.close()
	bo := backoff{min: p.cfg.Apply.RetryMin, max: p.cfg.Apply.RetryMax}
	for {
		started := time.Now()
		p.attempt.reset()
		p.beat.Beat()
		err := lock.ensure(ctx)
		switch {
		case err == nil && p.cfg.StreamOnly():
			err = p.runStreamOnly(ctx)
		case err == nil:
			err = p.runOnce(ctx)
		}
		p.m.Streaming.Set(0)
		if ctx.Err() != nil {
			p.Health.Set(false, "stopped")
			return nil
		}
		p.m.ApplyErrors.Inc()
		if !Retryable(err) {
			p.Health.Set(false, err.Error())
			return err
		}
		wait := bo.next(p.attempt.progressed(err, time.Since(started)))
		p.Health.Set(false, err.Error())
		if hint := resourceHint(err); hint != "" {
			p.log.Warn("stream interrupted; resuming from checkpoint", "err", config.RedactDSN(err.Error()), "hint", hint, "retry_in", wait)
		} else {
			p.log.Warn("stream interrupted; resuming from checkpoint", "err", config.RedactDSN(err.Error()), "retry_in", wait)
		}
		p.m.Reconnects.Inc()
		if !p.sleep(ctx, wait) {
			return nil
		}
	}
}

// sleep waits d, beating meanwhile; false when ctx ended first.
func (p *Pipeline) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-tick.C:
			p.beat.Beat()
		}
	}
}

// SourceTables lists the distinct configured source tables.
func SourceTables(cfg *config.Config) []string {
	var out []string
	seen := map[string]bool{}
	for _, t := range cfg.Tables {
		q := config.Qualified(t.Source)
		if !seen[q] {
			seen[q] = true
			out = append(out, q)
		}
	}
	return out
}

func connect(ctx context.Context, dsn, which string, spec dial.Spec) (*pgx.Conn, error) {
	conn, err := dial.Open(ctx, dsn, spec)
	if err != nil {
		return nil, fmt.Errorf("connect to %s database: %w", which, err)
	}
	return conn, nil
}

// setupTimeout bounds the start of an attempt (connections, catalog,
// publication, checkpoint), so a silent link there is noticed too. Only
// creating the slot may take longer: it waits for the transactions
// running on the old database.
func (p *Pipeline) setupTimeout() time.Duration {
	return max(p.cfg.Apply.StatementTimeout, p.cfg.Source.ReceiveTimeout) + dial.ConnectTimeout
}

func (p *Pipeline) runOnce(parent context.Context) error {
	cfg := p.cfg
	ctx, cancelSetup := context.WithTimeout(parent, p.setupTimeout())
	defer cancelSetup()
	src, err := connect(ctx, cfg.Source.DSN, "source", dial.Short(cfg.Name, "source"))
	if err != nil {
		return err
	}
	defer closeConn(src)
	tgt, err := connect(ctx, cfg.Target.DSN, "target", dial.Apply(cfg.Name, cfg.Apply.StatementTimeout))
	if err != nil {
		return err
	}
	defer closeConn(tgt)
	if err := prepareTarget(ctx, tgt, cfg.Apply); err != nil {
		return err
	}
	// Before the checkpoint is read: a session that outlived its client
	// must not commit after that.
	if err := fenceApply(ctx, tgt, cfg.Name, p.log); err != nil {
		return err
	}
	if err := setupOrigin(ctx, tgt, cfg.Apply, p.log); err != nil {
		return err
	}
	p.beat.Beat()

	tables, err := Plan(ctx, cfg, src, tgt)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("plan: %w", ctx.Err())
		}
		return &FatalError{Err: err}
	}
	if err := checkpoint.EnsureSchema(ctx, tgt); err != nil {
		return err
	}
	if err := decoder.EnsurePublication(ctx, src, cfg.Source.Publication, SourceTables(cfg), *cfg.Source.CreatePublication); err != nil {
		if Retryable(err) {
			return err // a lock_timeout behind someone's transaction, a lost link
		}
		return &FatalError{Err: err}
	}
	p.beat.Beat()
	slot, err := decoder.LookupSlot(ctx, src, cfg.Source.Slot)
	if err != nil {
		return err
	}
	if err := decoder.CheckSlot(slot, cfg.Source.Slot); err != nil {
		return &FatalError{Err: err}
	}
	created := false
	if !slot.Exists {
		// Not a stuck loop: PostgreSQL waits for running transactions.
		p.beat.Leave()
		p.log.Info("creating replication slot; it is ready once the transactions running on the old database have ended", "slot", cfg.Source.Slot)
		cctx, cancel := context.WithTimeout(parent, time.Hour)
		slot, err = decoder.CreateSlot(cctx, src, cfg.Source.Slot)
		cancel()
		p.beat = p.Health.Live.Join("pipeline")
		if err != nil {
			return err
		}
		created = true
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

	dec, leave := p.newDecoder()
	defer leave()
	groupable, err := Groupable(ctx, tgt, tables)
	if err != nil {
		return err
	}
	deps := applierDeps{cfg: cfg, base: p.base, m: p.m, bf: p.bf, processed: p.markProcessed, settled: p.attempt.settle(&p.Health, p.m)}
	// Deep enough that the decoder keeps reading while the applier waits on
	// the target: at 100k changes/s a 50 ms flush is 5000 events.
	events := make(chan change.Event, 16384)

	var jobs []*backfill.Job
	if cfg.Backfill.IsEnabled() {
		if jobs, err = p.backfillJobs(ctx, tables, tgt); err != nil {
			return err
		}
		deps.tracker = backfill.NewTracker()
	}

	pub, err := p.openPublisher(ctx, pos, src, jobs)
	if err != nil {
		return err
	}
	defer pub.close()

	// Setup is done: from here every call has its own bound.
	cancelSetup()
	appBeat := p.Health.Live.Join("applier")
	defer appBeat.Leave()
	deps.beat = appBeat
	a := newApplier(deps, tables, src, tgt, store, dec, pos, groupable)
	a.pub = pub
	// The applier's shutdown must outlive the decoder's: it commits what is
	// complete after the stream stops.
	g, gctx := errgroup.WithContext(parent)
	g.Go(func() error { return dec.Run(gctx, pos, events) })
	g.Go(func() error { return a.run(gctx, parent, events) })
	if len(jobs) > 0 {
		r := &backfill.Runner{Name: cfg.Name, DSN: cfg.Source.DSN, Workers: cfg.Backfill.Workers, Cfg: cfg.Backfill,
			Control: p.Backfill, Tracker: deps.tracker, Metrics: p.bf, Log: p.base.With("component", "backfill"), Lag: p.Lag}
		g.Go(func() error { return r.Run(gctx, jobs) })
	}
	// Ready and streaming only once the applier settles: an attempt that
	// fails at its first write (a full disk) must not look healthy.
	// The stream's loops beat from here on; the retry loop waits.
	p.beat.Leave()
	defer func() { p.beat = p.Health.Live.Join("pipeline") }()
	return g.Wait()
}

func (p *Pipeline) backfillJobs(ctx context.Context, tables []*Table, tgt *pgx.Conn) ([]*backfill.Job, error) {
	progress, err := checkpoint.LoadProgress(ctx, tgt, p.cfg.Name)
	if err != nil {
		return nil, err
	}
	var jobs []*backfill.Job
	for i, t := range tables {
		j, err := backfill.NewJob(t.Field, t.Source, t.Mapping, i)
		if err != nil {
			return nil, &FatalError{Err: err}
		}
		j.Progress = progress[j.Name()]
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
