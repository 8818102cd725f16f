// Package decoder tails the source's WAL through a logical replication slot
// (pgoutput) and turns it into change events. It never decides what is
// durable: the pipeline tells it (SetFlushed), and only that position is
// confirmed to the server, so a crash can only redeliver, never skip.
package decoder

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/dial"
)

// Options configure a Decoder.
type Options struct {
	DSN         string
	Migration   string // for application_name
	Slot        string
	Publication string
	// StatusInterval is how often the durable position is reported; it must
	// stay well under the server's wal_sender_timeout (default 60s).
	StatusInterval time.Duration
	// ReceiveTimeout declares the link dead when nothing arrives for this
	// long (source.receive_timeout).
	ReceiveTimeout time.Duration
	// Beat is called at least every half second while the loop runs, for
	// the liveness probe.
	Beat func()
	Log  *slog.Logger
}

// Decoder streams one slot.
type Decoder struct {
	opts    Options
	flushed atomic.Uint64
	// received is the end of the last WAL data seen, for metrics.
	received atomic.Uint64
	// heard is when the server last sent anything (UnixNano; 0: never).
	heard atomic.Int64
	rels  map[uint32]*change.Relation
	// xid is the transaction being decoded (pgoutput v1 sends each one
	// whole, between its Begin and Commit).
	xid uint32
}

// New returns a Decoder; Run connects.
func New(opts Options) *Decoder {
	if opts.StatusInterval == 0 {
		opts.StatusInterval = 5 * time.Second
	}
	if opts.ReceiveTimeout == 0 {
		opts.ReceiveTimeout = time.Minute
	}
	if opts.Beat == nil {
		opts.Beat = func() {}
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	return &Decoder{opts: opts, rels: map[uint32]*change.Relation{}}
}

// SetFlushed records that every transaction ending at or before lsn is
// durable on the target. Only this position is ever confirmed.
func (d *Decoder) SetFlushed(lsn change.LSN) {
	for {
		cur := d.flushed.Load()
		if uint64(lsn) <= cur || d.flushed.CompareAndSwap(cur, uint64(lsn)) {
			return
		}
	}
}

// Flushed is the position last confirmed (or about to be).
func (d *Decoder) Flushed() change.LSN { return change.LSN(d.flushed.Load()) }

// Received is the end of the last WAL data received.
func (d *Decoder) Received() change.LSN { return change.LSN(d.received.Load()) }

// Heard is when the server last sent anything on the stream (zero: not
// yet).
func (d *Decoder) Heard() time.Time {
	if n := d.heard.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Connect opens a replication connection.
func Connect(ctx context.Context, dsn, migration string) (*pgconn.PgConn, error) {
	conn, err := dial.OpenPg(ctx, dsn, dial.Replication(migration))
	if err != nil {
		return nil, fmt.Errorf("replication connection to source: %w", err)
	}
	return conn, nil
}

// SilentError is a replication link on which nothing arrived for
// source.receive_timeout, although tandem asked the server for a reply:
// the link or the server is gone without a word. It is retried.
type SilentError struct {
	For time.Duration
}

func (e *SilentError) Error() string {
	return fmt.Sprintf("receive from source: nothing arrived on the replication stream for %s, not even a reply to a keepalive request (source.receive_timeout): the link or the old database is unresponsive; reconnecting", e.For.Round(time.Millisecond))
}

// Run streams from start (0: the slot's confirmed position) into out until
// ctx ends or the connection fails. Sends block while out is full, but the
// durable position keeps being reported meanwhile so the server does not
// time out.
func (d *Decoder) Run(ctx context.Context, start change.LSN, out chan<- change.Event) error {
	conn, err := Connect(ctx, d.opts.DSN, d.opts.Migration)
	if err != nil {
		return err
	}
	defer func() {
		// A close on a dead link must not wait for it.
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn.Close(cctx)
	}()
	d.SetFlushed(start)

	// The server answers START_REPLICATION at once; a link that is already
	// silent must not hang here.
	sctx, cancel := context.WithTimeout(ctx, d.opts.ReceiveTimeout)
	err = pglogrepl.StartReplication(sctx, conn, d.opts.Slot, start, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{
			"proto_version '1'",
			fmt.Sprintf("publication_names '%s'", d.opts.Publication),
			"messages 'true'",
		},
	})
	cancel()
	if err != nil {
		if lost := slotLost(d.opts.Slot, err); lost != nil {
			return lost
		}
		return fmt.Errorf("start replication on slot %s: %w", d.opts.Slot, err)
	}
	d.opts.Log.Info("streaming", "slot", d.opts.Slot, "from", start)

	s := &stream{d: d, conn: conn, out: out, heard: time.Now()}
	s.ticker = time.NewTicker(d.opts.StatusInterval)
	defer s.ticker.Stop()
	// Ask for a reply right away: it proves the link works end to end,
	// which is what lets the pipeline's retry backoff start small again.
	if err := s.status(ctx, true); err != nil {
		return err
	}
	return s.loop(ctx)
}

type stream struct {
	d      *Decoder
	conn   *pgconn.PgConn
	out    chan<- change.Event
	ticker *time.Ticker
	inTx   bool
	sent   change.LSN
	// heard is when the last message was handled; pinged is set once a
	// reply was requested for the current silence.
	heard  time.Time
	pinged bool
}

func (s *stream) status(ctx context.Context, reply bool) error {
	// Write, flush and apply are all the durable position: nothing is
	// "written" for tandem until the target committed it, and a zero flush
	// position would be replaced by the write position (field notes).
	pos := s.d.Flushed()
	if pos == 0 {
		return nil
	}
	// A write to a link that stopped taking bytes must give up too.
	ctx, cancel := context.WithTimeout(ctx, s.d.opts.ReceiveTimeout)
	defer cancel()
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos, ReplyRequested: reply,
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	s.sent = pos
	return nil
}

func (s *stream) emit(ctx context.Context, ev change.Event) error {
	for {
		select {
		case s.out <- ev:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-s.ticker.C:
			s.d.opts.Beat()
			if err := s.status(ctx, false); err != nil {
				return err
			}
		}
	}
}

// checkSilence declares the link dead after receive_timeout without a
// message. The server sends keepalives on its own only when it has not
// heard from tandem for half its wal_sender_timeout, and tandem's status
// updates keep it hearing, so an idle but healthy link can be quiet for
// good: after a third of the timeout tandem asks for a reply, which a
// live server sends at once.
func (s *stream) checkSilence(ctx context.Context, now time.Time) error {
	quiet := now.Sub(s.heard)
	timeout := s.d.opts.ReceiveTimeout
	switch {
	case quiet >= timeout:
		return &SilentError{For: quiet}
	case quiet >= timeout/3 && !s.pinged:
		s.pinged = true
		return s.status(ctx, true)
	}
	return nil
}

func (s *stream) loop(ctx context.Context) error {
	// One deadline context per wake-up period rather than per message: a
	// timer per message cost a quarter of the decoder's CPU in a drain.
	var w waker
	w.beat = s.d.opts.Beat
	defer w.stop()
	for {
		select {
		case <-s.ticker.C:
			if err := s.status(ctx, false); err != nil {
				return err
			}
		default:
		}
		if s.d.Flushed() != s.sent && !s.inTx {
			// Confirm promptly once the pipeline commits, so the source
			// can recycle WAL without waiting for the next tick.
			if err := s.status(ctx, false); err != nil {
				return err
			}
		}
		msg, err := s.conn.ReceiveMessage(w.next(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) && !s.conn.IsClosed() {
				if err := s.checkSilence(ctx, time.Now()); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("receive from source: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if err := s.handle(ctx, m.Data); err != nil {
				return err
			}
			// Counted from when the message was handled, not received: a
			// send blocked on a busy applier is not silence on the link.
			s.heard, s.pinged = time.Now(), false
			s.d.heard.Store(s.heard.UnixNano())
		case *pgproto3.ErrorResponse:
			pgErr := pgconn.ErrorResponseToPgError(m)
			if lost := slotLost(s.d.opts.Slot, pgErr); lost != nil {
				return lost
			}
			return fmt.Errorf("source replication: %w", pgErr)
		case *pgproto3.CopyDone:
			return fmt.Errorf("source ended the replication stream")
		}
	}
}

// waker hands out a context that expires every wake period, renewed only
// once it has.
type waker struct {
	ctx    context.Context
	cancel context.CancelFunc
	beat   func()
}

const wake = 500 * time.Millisecond

func (w *waker) next(parent context.Context) context.Context {
	if w.ctx == nil || w.ctx.Err() != nil {
		w.stop()
		w.beat()
		w.ctx, w.cancel = context.WithTimeout(parent, wake)
	}
	return w.ctx
}

func (w *waker) stop() {
	if w.cancel != nil {
		w.cancel()
	}
}

func (s *stream) handle(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parse keepalive: %w", err)
		}
		if ka.ReplyRequested {
			if err := s.status(ctx, false); err != nil {
				return err
			}
		}
		if !s.inTx {
			return s.emit(ctx, change.Idle{WALEnd: ka.ServerWALEnd})
		}
		return nil
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("parse XLogData: %w", err)
		}
		if end := uint64(xld.WALStart) + uint64(len(xld.WALData)); end > s.d.received.Load() {
			s.d.received.Store(end)
		}
		ev, err := s.d.decode(xld.WALData)
		if err != nil {
			return fmt.Errorf("decode pgoutput at %s: %w", xld.WALStart, err)
		}
		switch ev.(type) {
		case nil:
			return nil
		case *change.Begin:
			s.inTx = true
		case *change.Commit:
			s.inTx = false
		}
		return s.emit(ctx, ev)
	}
	return nil
}

// decode turns one pgoutput message into an event (nil for messages the
// pipeline does not need).
func (d *Decoder) decode(wal []byte) (change.Event, error) {
	msg, err := pglogrepl.Parse(wal)
	if err != nil {
		return nil, err
	}
	switch m := msg.(type) {
	case *pglogrepl.BeginMessage:
		d.xid = m.Xid
		return &change.Begin{XID: m.Xid, FinalLSN: m.FinalLSN, CommitTime: m.CommitTime}, nil
	case *pglogrepl.CommitMessage:
		return &change.Commit{LSN: m.CommitLSN, EndLSN: m.TransactionEndLSN, CommitTime: m.CommitTime}, nil
	case *pglogrepl.RelationMessage:
		rel := &change.Relation{OID: m.RelationID, Schema: m.Namespace, Name: m.RelationName, ReplicaIdentity: m.ReplicaIdentity}
		for _, c := range m.Columns {
			rel.Columns = append(rel.Columns, change.Column{Name: c.Name, TypeOID: c.DataType, TypeMod: c.TypeModifier, Key: c.Flags&1 == 1})
		}
		d.rels[rel.OID] = rel
		return rel, nil
	case *pglogrepl.TypeMessage:
		// Types are resolved by OID against the source catalog.
		return nil, nil
	case *pglogrepl.OriginMessage:
		return &change.Origin{LSN: m.CommitLSN, Name: m.Name}, nil
	case *pglogrepl.InsertMessage:
		rel, err := d.rel(m.RelationID)
		if err != nil {
			return nil, err
		}
		return &change.Change{Op: change.Insert, XID: d.xid, Rel: rel, New: tuple(m.Tuple)}, nil
	case *pglogrepl.UpdateMessage:
		rel, err := d.rel(m.RelationID)
		if err != nil {
			return nil, err
		}
		c := &change.Change{Op: change.Update, XID: d.xid, Rel: rel, New: tuple(m.NewTuple)}
		if m.OldTuple != nil {
			c.Old = tuple(m.OldTuple)
		}
		return c, nil
	case *pglogrepl.DeleteMessage:
		rel, err := d.rel(m.RelationID)
		if err != nil {
			return nil, err
		}
		return &change.Change{Op: change.Delete, XID: d.xid, Rel: rel, Old: tuple(m.OldTuple)}, nil
	case *pglogrepl.TruncateMessage:
		c := &change.Change{Op: change.Truncate, XID: d.xid, Cascade: m.Option&1 != 0, RestartIdentity: m.Option&2 != 0}
		for _, id := range m.RelationIDs {
			rel, err := d.rel(id)
			if err != nil {
				return nil, err
			}
			c.Truncated = append(c.Truncated, rel)
		}
		return c, nil
	case *pglogrepl.LogicalDecodingMessage:
		// Content aliases the receive buffer.
		return &change.Message{LSN: m.LSN, Transactional: m.Transactional, Prefix: m.Prefix, Content: append([]byte(nil), m.Content...)}, nil
	}
	return nil, nil
}

func (d *Decoder) rel(oid uint32) (*change.Relation, error) {
	r, ok := d.rels[oid]
	if !ok {
		return nil, fmt.Errorf("change for relation OID %d before its Relation message", oid)
	}
	return r, nil
}

func tuple(t *pglogrepl.TupleData) []change.Value {
	if t == nil {
		return nil
	}
	out := make([]change.Value, len(t.Columns))
	for i, c := range t.Columns {
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
			out[i] = change.Value{Kind: change.Null}
		case pglogrepl.TupleDataTypeToast:
			out[i] = change.Value{Kind: change.Unchanged}
		default:
			// pglogrepl copies Data out of the receive buffer already.
			out[i] = change.Value{Kind: change.Text, Data: c.Data}
		}
	}
	return out
}
