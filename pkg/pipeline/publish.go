package pipeline

import (
	"context"
	"log/slog"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/backfill"
	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/dial"
	"github.com/tandem-migrate/tandem/pkg/sink"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

// The publisher feeds the JetStream sink from the applier's loop (or, for
// a migration whose only target is the stream, from streamonly.go). It
// sees the same source transactions the applier applies, buffers their
// changes, turns them into messages (through the mapping, evaluated by
// the new database, for the "new" shape) and publishes them in commit
// order. Before the applier commits a target transaction with its
// checkpoint, durable waits for every PubAck: the stream is never behind
// the checkpoint, so the slot, confirmed after that commit, never passes
// what the stream holds. After a crash the stream may be ahead of the
// checkpoint; the publisher then skips what the stream already has
// (place), while the new database applies it again.

// streamSink is what the publisher needs of the JetStream sink.
type streamSink interface {
	Resume(ctx context.Context) (sink.Place, bool, error)
	Publish(ctx context.Context, o sink.Out) error
	Flush(ctx context.Context) (change.LSN, error)
	Sent() uint64
	Poll(ctx context.Context) (uint64, error)
	Close()
}

var _ streamSink = (*sink.JetStream)(nil)

// publishBatch is how many buffered changes trigger a flush before the
// commit; it bounds the memory held for a large source transaction.
const publishBatch = 2048

// eagerBatch is how many buffered changes a source commit publishes at
// once, without waiting for their PubAcks: while the applier goes on
// filling its target transaction they are acknowledged, and the wait
// before the target commit covers only the last ones.
const eagerBatch = 256

// pubTx is one source transaction as the publisher tracks it.
type pubTx struct {
	xid    uint32
	commit change.LSN
	at     time.Time
	end    change.LSN
	// after is the last position the stream already holds (-1: none):
	// a transaction cut by a crash in the middle of publishing it.
	after int
	seq   int
	held  *sink.Out
}

// pubItem is one buffered change, backfilled row or commit.
type pubItem struct {
	tx *pubTx
	c  *change.Change
	// maps are the mappings of c's table (of each truncated table for a
	// TRUNCATE) when c arrived.
	maps  [][]*transform.Mapping
	chunk *backfill.Chunk
	// proj holds, per mapping, the rows of the projection (new shape).
	proj []projected
	end  bool
}

// projected is where a change's tuples landed in a projection query's
// result (-1: not projected).
type projected struct{ newRow, oldRow int }

type publisher struct {
	cfg  *config.Config
	log  *slog.Logger
	js   streamSink
	proj *pgx.Conn // new shape only: the new database evaluates the mapping
	// place is where the stream stands; placed is false for a stream
	// without a message of this migration.
	place  sink.Place
	placed bool
	tx     *pubTx
	items  []pubItem
	queued int
	skip   bool
	// flushed is the end LSN of the last transaction acknowledged.
	flushed change.LSN
	batches map[*transform.Mapping]*projBatch
	dirty   []*transform.Mapping
	// types resolves domains to their base types, on the new database
	// (new shape) or the old one (old shape); relTypes and srcTypes hold
	// the old shape's resolved column types.
	types    baseTypes
	relTypes map[*change.Relation][]uint32
	srcTypes map[*transform.Mapping][]uint32
}

// openPublisher connects the JetStream sink when nats is configured
// (nil otherwise; a nil publisher does nothing) and reads where the
// stream stands. checkpoint is where the target's checkpoint resumes.
func (p *Pipeline) openPublisher(ctx context.Context, checkpoint change.LSN, src *pgx.Conn, jobs []*backfill.Job) (*publisher, error) {
	cfg := p.cfg
	if !cfg.NATS.Enabled() {
		return nil, nil
	}
	log := p.base.With("component", "jetstream")
	js, err := sink.OpenJetStream(ctx, cfg.NATS, cfg.Name, log, p.jsm)
	if err != nil {
		return nil, streamErr(err)
	}
	pub := newPublisher(cfg, log, js, src)
	if err := pub.resume(ctx, checkpoint); err != nil {
		pub.close()
		return nil, err
	}
	if cfg.NATS.NewShape() {
		if pub.proj, err = connect(ctx, cfg.Target.DSN, "target", dial.Short(cfg.Name, "publish")); err != nil {
			pub.close()
			return nil, err
		}
		pub.types.conn = pub.proj
	}
	if cfg.NATS.PublishBackfill() {
		// Published rows need every column's text; the binary path only
		// keeps the keys' (see backfill.Job.ReadAsText).
		for _, j := range jobs {
			j.ReadAsText()
		}
	}
	return pub, nil
}

func newPublisher(cfg *config.Config, log *slog.Logger, js streamSink, src *pgx.Conn) *publisher {
	return &publisher{cfg: cfg, log: log, js: js, batches: map[*transform.Mapping]*projBatch{}, types: baseTypes{conn: src},
		relTypes: map[*change.Relation][]uint32{}, srcTypes: map[*transform.Mapping][]uint32{}}
}

// resume reads the stream's last place. checkpoint is where the stream
// of the old database resumes, for the log. (The checkpoint may be past
// the stream's last message without anything missing: transactions with
// nothing to publish, and idle WAL, move it too.)
func (pub *publisher) resume(ctx context.Context, checkpoint change.LSN) error {
	place, ok, err := pub.js.Resume(ctx)
	if err != nil {
		return streamErr(err)
	}
	pub.place, pub.placed = place, ok
	switch {
	case !ok:
		pub.log.Info("the stream holds no message of this migration yet; publishing from the checkpoint on", "stream", pub.cfg.NATS.Stream, "checkpoint", checkpoint)
	default:
		pub.log.Info("resuming publication after the stream's last message", "commit_lsn", place.CommitLSN, "seq", place.Seq, "complete", place.Last)
	}
	return nil
}

func (pub *publisher) close() {
	if pub == nil {
		return
	}
	pub.js.Close()
	if pub.proj != nil {
		closeConn(pub.proj)
	}
}

// streamErr makes a sink failure the pipeline's kind of error.
func streamErr(err error) error {
	se, ok := err.(*sink.StreamError)
	switch {
	case !ok:
		return err
	case se.Retry:
		return &retryError{err}
	default:
		return &FatalError{Err: err}
	}
}

// observe follows transaction boundaries; it is called for every event
// the applier handles, before the applier decides anything.
func (pub *publisher) observe(ctx context.Context, ev change.Event) error {
	if pub == nil {
		return nil
	}
	switch e := ev.(type) {
	case *change.Begin:
		pub.tx = &pubTx{xid: e.XID, commit: e.FinalLSN, at: e.CommitTime, after: -1}
		pub.skip = false
		if pub.placed {
			switch {
			case !pub.place.After(e.FinalLSN, math.MaxInt):
				pub.skip = true // wholly in the stream already
			case e.FinalLSN == pub.place.CommitLSN:
				pub.tx.after = pub.place.Seq
			}
		}
	case *change.Commit:
		tx := pub.tx
		pub.tx = nil
		if tx != nil && !pub.skip {
			tx.end = e.EndLSN
			pub.items = append(pub.items, pubItem{tx: tx, end: true})
			if pub.queued >= eagerBatch {
				return pub.flush(ctx)
			}
		}
	}
	return nil
}

// change buffers a change the applier applies; byOID gives its table's
// mappings.
func (pub *publisher) change(ctx context.Context, c *change.Change, byOID map[uint32][]*transform.Mapping) error {
	if pub == nil || pub.tx == nil || pub.skip {
		return nil
	}
	it := pubItem{tx: pub.tx, c: c}
	if c.Op == change.Truncate {
		for _, rel := range c.Truncated {
			it.maps = append(it.maps, byOID[rel.OID])
		}
	} else {
		maps := byOID[c.Rel.OID]
		if len(maps) == 0 {
			return nil // not in the migration
		}
		it.maps = [][]*transform.Mapping{maps}
		if pub.proj == nil && pub.relTypes[c.Rel] == nil {
			oids := make([]uint32, len(c.Rel.Columns))
			for i, col := range c.Rel.Columns {
				oids[i] = col.TypeOID
			}
			types, err := pub.types.of(ctx, oids)
			if err != nil {
				return err
			}
			pub.relTypes[c.Rel] = types
		}
	}
	pub.items = append(pub.items, it)
	if pub.queued++; pub.queued >= publishBatch {
		return pub.flush(ctx)
	}
	return nil
}

// chunk publishes a backfill chunk's rows (op read) at its high
// watermark, in the transaction that carries it: a consumer reading from
// the start sees each copied row at a point of the history where it was
// so. The rows are the chunk's own, before it is written.
func (pub *publisher) chunk(ctx context.Context, c *backfill.Chunk) error {
	if pub == nil || pub.tx == nil || pub.skip || !pub.cfg.NATS.PublishBackfill() || len(c.Rows) == 0 {
		return nil
	}
	if m := c.Job.Mapping; pub.proj == nil && pub.srcTypes[m] == nil {
		oids := make([]uint32, len(m.Source))
		for i, sc := range m.Source {
			oids[i] = sc.TypeOID
		}
		types, err := pub.types.of(ctx, oids)
		if err != nil {
			return err
		}
		pub.srcTypes[m] = types
	}
	pub.items = append(pub.items, pubItem{tx: pub.tx, chunk: c})
	// The rows belong to the chunk, which is released once written.
	return pub.flush(ctx)
}

// durable publishes everything buffered and waits for every PubAck; the
// applier calls it right before it commits its checkpoint.
func (pub *publisher) durable(ctx context.Context) error {
	if pub == nil {
		return nil
	}
	if err := pub.flush(ctx); err != nil {
		return err
	}
	end, err := pub.js.Flush(ctx)
	if err != nil {
		return streamErr(err)
	}
	if end != 0 {
		pub.flushed = end
	}
	return nil
}

// flush turns the buffered items into messages and publishes them,
// holding back the last message of a transaction still open (whether it
// is the last is known only at its commit).
func (pub *publisher) flush(ctx context.Context) error {
	if len(pub.items) == 0 {
		return nil
	}
	if pub.proj != nil {
		if err := pub.project(ctx); err != nil {
			return err
		}
	}
	var buf []sink.Event
	for i := range pub.items {
		it := &pub.items[i]
		var err error
		switch {
		case it.end:
			err = pub.endTx(ctx, it.tx)
		default:
			buf = pub.events(buf[:0], it)
			for j := range buf {
				if err = pub.emit(ctx, it.tx, &buf[j]); err != nil {
					break
				}
			}
		}
		if err != nil {
			return err
		}
	}
	clear(pub.items)
	pub.items, pub.queued = pub.items[:0], 0
	return nil
}

// emit gives ev its position in the transaction and publishes the
// message held before it.
func (pub *publisher) emit(ctx context.Context, tx *pubTx, ev *sink.Event) error {
	ev.CommitLSN, ev.XID, ev.CommitTime, ev.Seq = tx.commit, tx.xid, tx.at, tx.seq
	tx.seq++
	if ev.Seq <= tx.after {
		return nil // the stream has it
	}
	out := &sink.Out{Subject: sink.Subject(pub.cfg.NATS.Subject, ev.Schema, ev.Table), Data: ev.AppendJSON(nil),
		CommitLSN: tx.commit, Seq: ev.Seq, Table: ev.Schema + "." + ev.Table, Op: ev.Op}
	held := tx.held
	tx.held = out
	if held != nil {
		return pub.publish(ctx, held)
	}
	return nil
}

// endTx publishes a transaction's last message, marked so. A transaction
// that a crash cut after the stream took some of its messages, and that
// comes back with nothing more to send (its backfill rows were not read
// again), is closed by a bare commit message.
func (pub *publisher) endTx(ctx context.Context, tx *pubTx) error {
	last := tx.held
	tx.held = nil
	if last == nil {
		if tx.after < 0 {
			return nil
		}
		ev := sink.Event{Op: sink.OpCommit, CommitLSN: tx.commit, XID: tx.xid, CommitTime: tx.at, Seq: max(tx.seq, tx.after+1)}
		last = &sink.Out{Subject: pub.cfg.NATS.Subject + "._commit", Data: ev.AppendJSON(nil), CommitLSN: tx.commit, Seq: ev.Seq, Op: ev.Op}
	}
	last.Last, last.EndLSN = true, tx.end
	return pub.publish(ctx, last)
}

func (pub *publisher) publish(ctx context.Context, o *sink.Out) error {
	if err := pub.js.Publish(ctx, *o); err != nil {
		return streamErr(err)
	}
	return nil
}

// events appends the messages of one item: one per mapping of its table
// (new shape) or one for the old table (old shape).
func (pub *publisher) events(dst []sink.Event, it *pubItem) []sink.Event {
	switch {
	case it.chunk != nil:
		return pub.readEvents(dst, it)
	case it.c.Op == change.Truncate:
		for i, rel := range it.c.Truncated {
			if pub.proj == nil {
				if len(it.maps[i]) > 0 {
					dst = append(dst, sink.Event{Op: "truncate", Schema: rel.Schema, Table: rel.Name})
				}
				continue
			}
			for _, m := range it.maps[i] {
				dst = append(dst, sink.Event{Op: "truncate", Schema: m.Target.Schema, Table: m.Target.Name})
			}
		}
		return dst
	case pub.proj == nil:
		return append(dst, oldShape(it.c, pub.relTypes[it.c.Rel]))
	}
	for i, m := range it.maps[0] {
		if ev, ok := pub.newShape(m, it.c, it.proj[i]); ok {
			dst = append(dst, ev)
		}
	}
	return dst
}
