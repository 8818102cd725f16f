package pipeline

import (
	"context"
	"fmt"
	"io"
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

type applier struct {
	p    *Pipeline
	log  *slog.Logger
	cfg  *config.Config
	src  *pgx.Conn
	sink *sink.PGSink
	dec  *decoder.Decoder

	bySource map[string][]*Table
	byOID    map[uint32][]*transform.Mapping
	// configured maps each configured source table's OID to its name, to
	// tell a renamed table from one outside the migration.
	configured map[uint32]string
	// leafSeen remembers the partitions already reported as arriving
	// under their own names.
	leafSeen map[uint32]bool
	tracker  *backfill.Tracker

	durable   change.LSN // committed on the target
	pending   change.LSN // end of the last source commit in the open target tx
	inSrcTx   bool
	skip      bool
	txChanges int
	txStart   time.Time
	lastIdle  time.Time
	txCount   int
	stmts     []transform.Stmt
	counters  map[string]prometheus.Counter
	broken    bool
	// beat is the applier's heartbeat (liveness).
	beat *metrics.Beat

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

func newApplier(p *Pipeline, tables []*Table, src, tgt *pgx.Conn, store checkpoint.Store, dec *decoder.Decoder, pos change.LSN, groupable map[*transform.Mapping]bool) *applier {
	a := &applier{
		p: p, log: p.base.With("component", "applier"), cfg: p.cfg, src: src, dec: dec,
		sink:       sink.NewPGSink(tgt, store, p.cfg.Apply.BatchChanges, p.base.With("component", "sink")),
		beat:       &metrics.Beat{},
		bySource:   map[string][]*Table{},
		byOID:      map[uint32][]*transform.Mapping{},
		configured: map[uint32]string{},
		leafSeen:   map[uint32]bool{},
		durable:    pos,
		counters:   map[string]prometheus.Counter{},
	}
	a.sink.SetTimeout(p.cfg.Apply.StatementTimeout)
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
func (a *applier) run(ctx, parent context.Context, events <-chan any) error {
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
	if err := a.sink.Commit(ctx, lsn); err != nil {
		return err
	}
	a.p.m.ApplyDuration.Observe(time.Since(start).Seconds())
	a.p.m.TargetCommits.Inc()
	a.p.m.Transactions.Add(float64(a.txCount))
	a.durable, a.pending, a.txChanges, a.txCount = lsn, 0, 0, 0
	a.p.markProcessed(lsn)
	a.p.m.CheckpointLSN.Set(float64(lsn))
	a.dec.SetFlushed(lsn)
	return nil
}

func (a *applier) handle(ctx context.Context, ev any) error {
	switch e := ev.(type) {
	case *change.Begin:
		a.inSrcTx = true
		// Everything that committed before the checkpoint is on the target.
		a.skip = e.FinalLSN < a.durable
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
				a.skipped(e.Rel.QualifiedName(), skipAlreadyApplied)
			}
			return nil
		}
		return a.onChange(ctx, e)
	case decoder.Idle:
		return a.onIdle(ctx, e.WALEnd)
	case *change.Message:
		if a.skip {
			return nil
		}
		return a.onMessage(ctx, e)
	case *change.Origin:
		// Origins matter only for loop prevention, which tandem does not need
		// while the old database is the only writer.
	}
	return nil
}

func (a *applier) onMessage(ctx context.Context, msg *change.Message) error {
	wm, ok := backfill.ParseWatermark(msg.Prefix, msg.Content, a.cfg.Name)
	if !ok || a.tracker == nil {
		return nil
	}
	if wm.Mark == "high" {
		if c := a.tracker.High(wm.Chunk); c != nil {
			return a.applyChunk(ctx, c)
		}
	}
	return nil
}

// applyChunk writes a chunk at its high watermark: COPY into a staging
// table, one set-based upsert through the mapping, and the chunk's cursor,
// all in the transaction that will carry the watermark's commit position.
func (a *applier) applyChunk(ctx context.Context, c *backfill.Chunk) error {
	defer c.Release()
	j := c.Job
	m := j.Mapping
	origin := sink.Origin{What: fmt.Sprintf("backfill chunk of %s after key %v", j.Name(), c.Cursor)}
	// Stream changes before the high watermark must land first.
	if err := a.flushGroups(ctx); err != nil {
		return err
	}
	direct, err := a.copyDirect(ctx, c, origin)
	if err != nil {
		return err
	}
	if !direct {
		if j.Binary() {
			a.staged.ResetBinary()
			a.staged.AddBinaryRows(c.Body, len(c.Rows))
		} else {
			a.staged.Reset()
			for _, row := range c.Rows {
				a.staged.AddRaw('u', row)
			}
		}
		if err := a.sink.ApplyStaged(ctx, m, j.StageName(), &a.staged, origin); err != nil {
			return classifyApply(err)
		}
	}
	a.sink.Exec(backfill.ProgressSQL, backfill.ProgressParams(a.cfg.Name, c, len(c.Rows)), origin)
	a.txChanges += len(c.Rows)
	a.p.bf.Rows.WithLabelValues(j.Name()).Add(float64(len(c.Rows)))
	path := "upsert"
	if direct {
		path = "copy"
	}
	a.p.bf.Chunks.WithLabelValues(j.Name(), path, j.Format()).Inc()
	return nil
}

// copyDirect COPYs a chunk straight into the target when its rows need no
// transform and none of its keys is there yet: the common case of a fresh
// range, where the staged upsert would write every row twice. The check
// and the COPY share the applier's transaction, and the applier is the
// target's only writer, so nothing can slip in between. It reports false
// when the chunk must take the staged path.
func (a *applier) copyDirect(ctx context.Context, c *backfill.Chunk, o sink.Origin) (bool, error) {
	j, rows := c.Job, c.Rows
	m := j.Mapping
	d, ok := j.Direct()
	if !ok || len(rows) == 0 {
		return false, nil
	}
	key := j.TextIndex(d.KeySrc[0])
	first := make([]string, 0, len(rows))
	for _, row := range rows {
		v := row[key]
		if v == nil {
			return false, nil // NULL keys never match; let the upsert decide
		}
		first = append(first, string(v))
	}
	// Chunks are read in key order; when the key type orders the same on
	// both servers, the chunk's first and last key bound it on the target.
	sql, params := m.KeyRangeSQL(d), [][]byte{[]byte(first[0]), []byte(first[len(first)-1])}
	if !d.Ranged {
		sql, params = m.AnyKeySQL(d), [][]byte{[]byte(backfill.ArrayLiteral(first))}
	}
	present, err := a.sink.QueryBool(ctx, sql, params, o)
	if err != nil {
		return false, classifyApply(err)
	}
	if present {
		return false, nil
	}
	var data io.Reader
	if j.Binary() {
		data = sink.BinaryCopy(c.Body)
	} else {
		a.staged.Reset()
		for _, row := range rows {
			a.staged.AddColumns(row, d.Source)
		}
		data = a.staged.Reader()
	}
	if err := a.sink.CopyIn(ctx, "", m.CopySQL(d), data, o); err != nil {
		return false, classifyApply(err)
	}
	return true, nil
}

// resolveMissing handles UPDATEs that kept unchanged TOAST values in place
// but found no row (the backfill has not copied it yet, or dropped its
// chunk row because of this very change): the row is read whole from the
// source by key and upserted. The source's current row is at least as new
// as the change; later changes replay over it in order, so the target
// converges, and a row deleted since is simply not found.
func (a *applier) resolveMissing(ctx context.Context) (bool, error) {
	if err := a.sink.Flush(ctx); err != nil {
		return false, classifyApply(err)
	}
	missing := a.sink.TakeMissing()
	for _, o := range missing {
		if err := a.refetch(ctx, o.Change); err != nil {
			return false, err
		}
	}
	return len(missing) > 0, nil
}

// settle sends everything the open transaction holds: grouped changes, and
// rows fetched again for updates that found none. Fetched rows are whole
// images, so this ends within two rounds.
func (a *applier) settle(ctx context.Context) error {
	for {
		if err := a.flushGroups(ctx); err != nil {
			return err
		}
		again, err := a.resolveMissing(ctx)
		if err != nil || !again {
			return err
		}
	}
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

func (a *applier) refetch(ctx context.Context, c *change.Change) error {
	tables := a.bySource[c.Rel.QualifiedName()]
	if len(tables) == 0 {
		return nil
	}
	st := tables[0].Source
	cols := make([]string, len(c.Rel.Columns))
	var where []string
	var params [][]byte
	for i, col := range c.Rel.Columns {
		cols[i] = pgx.Identifier{col.Name}.Sanitize()
		if col.Key && c.New[i].Kind == change.Text {
			typ := "text"
			if sc := st.Column(col.Name); sc != nil {
				typ = sc.Type
			}
			params = append(params, c.New[i].Data)
			where = append(where, fmt.Sprintf("%s = $%d::%s", cols[i], len(params), typ))
		}
	}
	if len(where) == 0 {
		return &FatalError{Err: fmt.Errorf("update of %s kept unchanged values for a row missing on the target, and carries no key to fetch it by", c.Rel.QualifiedName())}
	}
	q := fmt.Sprintf("SELECT %s FROM %s WHERE %s", strings.Join(cols, ", "), pgx.Identifier{c.Rel.Schema, c.Rel.Name}.Sanitize(), strings.Join(where, " AND "))
	// The old database's link gets the same bound as the new one's.
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Apply.StatementTimeout)
	defer cancel()
	rr := a.src.PgConn().ExecParams(ctx, q, params, nil, nil, nil)
	var row []change.Value
	for rr.NextRow() {
		vals := rr.Values()
		row = make([]change.Value, len(vals))
		for i, v := range vals {
			if v == nil {
				row[i] = change.Value{Kind: change.Null}
			} else {
				row[i] = change.Value{Kind: change.Text, Data: append([]byte(nil), v...)}
			}
		}
	}
	if _, err := rr.Close(); err != nil {
		return fmt.Errorf("fetch %s (%s) from source: %w", c.Rel.QualifiedName(), sink.RowKey(c), err)
	}
	if row == nil {
		return nil // deleted since; its DELETE follows in the stream
	}
	ins := &change.Change{Op: change.Insert, Rel: c.Rel, New: row}
	return a.onChangeMapped(ctx, ins, false)
}

// onIdle advances the checkpoint past WAL that holds nothing for us, so the
// slot does not pin WAL written by other tables or databases.
func (a *applier) onIdle(ctx context.Context, walEnd change.LSN) error {
	if a.pending != 0 || a.inSrcTx || a.sink.InTx() || walEnd <= a.durable {
		return nil
	}
	a.p.markProcessed(walEnd)
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
		c = a.p.m.Changes.WithLabelValues(table, op.String())
		a.counters[k] = c
	}
	return c
}

func (a *applier) onChange(ctx context.Context, c *change.Change) error {
	if a.tracker != nil {
		a.tracker.TouchChange(c)
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
			if err := a.sink.Queue(ctx, st, sink.Origin{Table: m.TargetName, Change: c, NeedRow: st.NeedRow}); err != nil {
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
		}
	}
	if len(targets) == 0 {
		return nil
	}
	if err := a.flushGroups(ctx); err != nil {
		return err
	}
	a.sink.Exec("TRUNCATE "+strings.Join(targets, ", "), nil, sink.Origin{What: "TRUNCATE " + strings.Join(targets, ", ")})
	a.p.m.TruncatesTotal.Inc()
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
