package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-migrate/tandem/pkg/backfill"
	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/checkpoint"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/decoder"
	"github.com/tandem-migrate/tandem/pkg/metrics"
	"github.com/tandem-migrate/tandem/pkg/sink"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

// idleCheckpointEvery bounds how often an idle stream writes its position.
const idleCheckpointEvery = 5 * time.Second

// applierDeps is what an applier takes from the pipeline that runs it,
// and all it may touch of it.
type applierDeps struct {
	cfg *config.Config
	// base is the logger components derive their own from.
	base *slog.Logger
	m    *metrics.Stream
	bf   *backfill.Metrics
	// tracker is the backfill's chunk tracker; nil without backfill.
	tracker *backfill.Tracker
	beat    *metrics.Beat
	// processed marks WAL as handled, for the lag estimate.
	processed func(change.LSN)
	// settled reports that the stream works end to end: rows committed on
	// the new database (work), or caught up with nothing waiting.
	settled func(work bool)
}

type applier struct {
	applierDeps
	log  *slog.Logger
	src  *pgx.Conn
	sink *sink.PGSink
	dec  *decoder.Decoder
	// pub publishes to NATS JetStream (publish.go); nil without nats.
	pub *publisher

	bySource map[string][]*Table
	byOID    map[uint32][]*transform.Mapping
	// configured maps each configured source table's OID to its name, to
	// tell a renamed table from one outside the migration.
	configured map[uint32]string
	// leafSeen remembers the partitions already reported as arriving
	// under their own names.
	leafSeen map[uint32]bool

	durable   change.LSN // committed on the target
	pending   change.LSN // end of the last source commit in the open target tx
	inSrcTx   bool
	skip      bool
	skipWhy   string // the skipped metric's reason while skip is set
	txChanges int
	txStart   time.Time
	lastIdle  time.Time
	txCount   int
	stmts     []transform.Stmt
	counters  map[string]prometheus.Counter
	broken    bool
	// touched lists the target tables the open transaction changed; the
	// commit records them (checkpoint.ActivityStatement).
	touched    []string
	touchedSet map[string]bool

	// groups hold the net changes of Groupable tables until a barrier
	// (commit, TRUNCATE, a backfill chunk, a size limit).
	groups       map[*transform.Mapping]*sink.Group
	groupList    []*sink.Group
	grouped      int
	groupedBytes int
	staged       sink.Staged
}

// maxGroupedBytes bounds the memory the groups hold.
const maxGroupedBytes = 16 << 20

func (a *applier) addGroup(m *transform.Mapping, stage string) {
	g := sink.NewGroup(m, stage)
	a.groups[m] = g
	a.groupList = a.groupList[:0]
	for _, g := range a.groups {
		a.groupList = append(a.groupList, g)
	}
}

func newApplier(d applierDeps, tables []*Table, src, tgt *pgx.Conn, store checkpoint.Store, dec *decoder.Decoder, pos change.LSN, groupable map[*transform.Mapping]bool) *applier {
	a := &applier{
		applierDeps: d, log: d.base.With("component", "applier"), src: src, dec: dec,
		sink:       sink.NewPGSink(tgt, store, d.cfg.Apply.BatchChanges, d.base.With("component", "sink")),
		bySource:   map[string][]*Table{},
		byOID:      map[uint32][]*transform.Mapping{},
		configured: map[uint32]string{},
		leafSeen:   map[uint32]bool{},
		durable:    pos,
		counters:   map[string]prometheus.Counter{},
		touchedSet: map[string]bool{},
	}
	a.sink.SetTimeout(d.cfg.Apply.StatementTimeout)
	a.groups = map[*transform.Mapping]*sink.Group{}
	for i, t := range tables {
		a.bySource[t.Source.String()] = append(a.bySource[t.Source.String()], t)
		a.configured[t.Source.OID] = t.Source.String()
		if groupable[t.Mapping] {
			a.addGroup(t.Mapping, fmt.Sprintf("tandem_apply_%d", i))
		}
	}
	return a
}

// run applies events until ctx (the stream's) ends. On a clean stop
// (parent cancelled) it commits the source transactions that are complete
// in the open target transaction; a partial source transaction is rolled
// back and will be redelivered. Database calls run on opCtx, which outlives
// a clean stop by the shutdown timeout, so a statement in flight when the
// signal arrives finishes instead of breaking the final flush.
func (a *applier) run(ctx, parent context.Context, events <-chan change.Event) error {
	opCtx, cancelOp := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelOp()
	finished := make(chan struct{})
	defer close(finished)
	go func() {
		select {
		case <-finished:
			return
		case <-ctx.Done():
		}
		if parent.Err() != nil {
			select {
			case <-finished:
			case <-time.After(a.cfg.Apply.ShutdownTimeout):
			}
		}
		cancelOp()
	}()

	// No commit timer is needed: a target transaction holding complete
	// source transactions commits as soon as the queue runs dry, so it
	// only stays open while more events are already waiting. The ticker
	// only beats: a busy loop picks it now and then too.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for ctx.Err() == nil {
		var err error
		select {
		case <-ctx.Done():
		case <-tick.C:
			a.beat.Beat()
		case ev := <-events:
			if err = a.handle(opCtx, ev); err == nil && a.shouldCommit(len(events)) {
				err = a.commit(opCtx)
			}
		}
		if err != nil {
			// The target transaction is gone with whatever it held; nothing
			// may be committed after this (it would checkpoint rows that
			// were never written).
			a.broken = true
			a.abandon()
			return err
		}
	}
	if parent.Err() != nil {
		return a.shutdown(opCtx)
	}
	a.abandon()
	return nil
}

func (a *applier) shouldCommit(queued int) bool {
	if a.pending == 0 || a.inSrcTx {
		return false
	}
	return queued == 0 || a.txChanges >= a.cfg.Apply.CommitChanges || time.Since(a.txStart) >= a.cfg.Apply.CommitInterval
}

func (a *applier) shutdown(ctx context.Context) error {
	switch {
	case a.pending != 0 && !a.inSrcTx && !a.broken:
		if err := a.commit(ctx); err != nil {
			a.log.Warn("final commit failed; those transactions will be applied again on restart", "err", err)
			return nil
		}
		a.log.Info("stopped cleanly after a final commit", "checkpoint", a.durable)
	case a.sink.InTx():
		if err := a.sink.Rollback(ctx); err != nil {
			a.log.Warn("rollback on shutdown", "err", err)
		}
		a.log.Info("stopped; the source transaction in progress was rolled back and will be applied again on restart", "checkpoint", a.durable)
	default:
		a.log.Info("stopped cleanly", "checkpoint", a.durable)
	}
	return nil
}

func (a *applier) abandon() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = a.sink.Rollback(ctx)
}

func (a *applier) commit(ctx context.Context) error {
	if a.broken {
		return fmt.Errorf("internal: commit after a failed transaction")
	}
	start := time.Now()
	lsn := a.pending
	if err := a.settle(ctx); err != nil {
		return err
	}
	if len(a.touched) > 0 {
		if a.cfg.Checkpoint.Store == "target" {
			sql, params := checkpoint.ActivityStatement(a.cfg.Name, a.touched, lsn)
			a.sink.Exec(sql, params, sink.Cause{What: "table activity " + lsn.String()})
		}
		a.touched = a.touched[:0]
		clear(a.touchedSet)
	}
	// The stream holds everything before the checkpoint does.
	if err := a.pub.durable(ctx); err != nil {
		return err
	}
	if err := a.sink.Commit(ctx, lsn); err != nil {
		return err
	}
	a.m.ApplyDuration.Observe(time.Since(start).Seconds())
	a.m.TargetCommits.Inc()
	a.m.Transactions.Add(float64(a.txCount))
	a.settled(a.txChanges > 0)
	a.durable, a.pending, a.txChanges, a.txCount = lsn, 0, 0, 0
	a.processed(lsn)
	a.m.CheckpointLSN.Set(float64(lsn))
	a.dec.SetFlushed(lsn)
	return nil
}

func (a *applier) handle(ctx context.Context, ev change.Event) error {
	if err := a.pub.observe(ctx, ev); err != nil {
		return err
	}
	switch e := ev.(type) {
	case *change.Begin:
		a.inSrcTx = true
		// Everything that committed before the checkpoint is on the target.
		a.skip, a.skipWhy = e.FinalLSN < a.durable, skipAlreadyApplied
		if !a.skip && a.pending == 0 {
			a.txStart = time.Now()
		}
	case *change.Commit:
		a.inSrcTx = false
		if a.skip {
			a.skip = false
			return nil
		}
		a.pending = e.EndLSN
		a.txCount++
	case *change.Relation:
		return a.onRelation(ctx, e)
	case *change.Change:
		if a.skip {
			if e.Rel != nil {
				a.skipped(e.Rel.QualifiedName(), a.skipWhy)
			}
			return nil
		}
		return a.onChange(ctx, e)
	case change.Idle:
		return a.onIdle(ctx, e.WALEnd)
	case *change.Message:
		if a.skip {
			return nil
		}
		return a.onMessage(ctx, e)
	case *change.Origin:
		// pgoutput sends it after Begin, before the changes, for a
		// transaction committed by a session with a replication origin.
		if e.Name != "" && e.Name == a.cfg.Source.SkipOrigin && !a.skip {
			a.skip, a.skipWhy = true, skipEcho
		}
	}
	return nil
}

// flushGroups writes every group's net changes in the open transaction.
func (a *applier) flushGroups(ctx context.Context) error {
	for _, g := range a.groupList {
		if err := a.sink.FlushGroup(ctx, g); err != nil {
			return classifyApply(err)
		}
	}
	a.grouped, a.groupedBytes = 0, 0
	return nil
}

// onIdle advances the checkpoint past WAL that holds nothing for us, so the
// slot does not pin WAL written by other tables or databases.
func (a *applier) onIdle(ctx context.Context, walEnd change.LSN) error {
	if a.pending != 0 || a.inSrcTx || a.sink.InTx() {
		return nil
	}
	// Caught up with the old database, and nothing waits on the new one.
	a.settled(false)
	if walEnd <= a.durable {
		return nil
	}
	a.processed(walEnd)
	if time.Since(a.lastIdle) < idleCheckpointEvery {
		return nil
	}
	a.lastIdle = time.Now()
	a.pending = walEnd
	return a.commit(ctx)
}

func (a *applier) counter(table string, op change.Op) prometheus.Counter {
	k := table + "/" + op.String()
	c, ok := a.counters[k]
	if !ok {
		c = a.m.Changes.WithLabelValues(table, op.String())
		a.counters[k] = c
	}
	return c
}

func (a *applier) onChange(ctx context.Context, c *change.Change) error {
	if a.tracker != nil {
		a.tracker.TouchChange(c)
	}
	if err := a.pub.change(ctx, c, a.byOID); err != nil {
		return err
	}
	if c.Op == change.Truncate {
		return a.onTruncate(ctx, c)
	}
	return a.onChangeMapped(ctx, c, true)
}

func (a *applier) onChangeMapped(ctx context.Context, c *change.Change, count bool) error {
	maps, ok := a.byOID[c.Rel.OID]
	if !ok {
		if count {
			a.skipped(c.Rel.QualifiedName(), skipNotConfigured)
		}
		return nil
	}
	if c.Rel.Leaf != "" && !a.leafSeen[c.Rel.OID] {
		a.leafSeen[c.Rel.OID] = true
		a.log.Info("the publication sends a partition's changes under its own name; they go to the mapping of its partitioned table",
			"partition", c.Rel.Leaf, "table", c.Rel.QualifiedName())
	}
	for _, m := range maps {
		a.touch(m.TargetName)
		if g := a.groups[m]; g != nil {
			before := g.Bytes()
			if g.Add(c) {
				a.grouped++
				a.groupedBytes += g.Bytes() - before
				a.txChanges++
				if count {
					a.counter(c.Rel.QualifiedName(), c.Op).Inc()
				}
				if a.grouped >= a.cfg.Apply.CommitChanges || a.groupedBytes >= maxGroupedBytes {
					if err := a.flushGroups(ctx); err != nil {
						return err
					}
				}
				continue
			}
			// Not foldable: what the group holds for this table goes first.
			if err := a.sink.FlushGroup(ctx, g); err != nil {
				return classifyApply(err)
			}
		}
		var err error
		a.stmts, err = m.Statements(a.stmts[:0], c)
		if err != nil {
			return &FatalError{Err: fmt.Errorf("transform %s: %w", m.SourceName, err)}
		}
		for _, st := range a.stmts {
			if err := a.sink.Queue(ctx, st, sink.Cause{Table: m.TargetName, Change: c, NeedRow: st.NeedRow}); err != nil {
				return classifyApply(err)
			}
		}
		a.txChanges++
		if count {
			a.counter(c.Rel.QualifiedName(), c.Op).Inc()
		}
	}
	return nil
}

func (a *applier) onTruncate(ctx context.Context, c *change.Change) error {
	var targets []string
	for _, rel := range c.Truncated {
		maps, ok := a.byOID[rel.OID]
		if !ok {
			a.skipped(rel.QualifiedName(), skipNotConfigured)
			continue
		}
		if rel.Leaf != "" {
			// The new table holds every partition's rows; emptying it would
			// delete the other partitions' rows too.
			return &FatalError{Err: fmt.Errorf("TRUNCATE of partition %s of %s cannot be applied: the new table holds the rows of every partition. The stream cannot go past it: run tandem teardown, empty the new tables and start again (the backfill copies the rows as they are now); while migrating, empty one partition with DELETE, not TRUNCATE", rel.Leaf, rel.QualifiedName())}
		}
		for _, m := range maps {
			targets = append(targets, m.Target.QualifiedName())
			a.touch(m.TargetName)
		}
	}
	if len(targets) == 0 {
		return nil
	}
	if err := a.flushGroups(ctx); err != nil {
		return err
	}
	a.sink.Exec("TRUNCATE "+strings.Join(targets, ", "), nil, sink.Cause{What: "TRUNCATE " + strings.Join(targets, ", ")})
	a.m.TruncatesTotal.Inc()
	a.txChanges++
	return nil
}

// classifyApply turns a refused statement into a stop: the same statement
// would be refused again. Lost connections stay retryable.
func classifyApply(err error) error {
	if Retryable(err) {
		return err
	}
	return &FatalError{Err: err}
}

// touch runs for every change: keyed by the mapping's own spelling, it
// costs one map lookup.
func (a *applier) touch(name string) {
	if !a.touchedSet[name] {
		a.touchedSet[name] = true
		a.touched = append(a.touched, config.Qualified(name))
	}
}
