// Package sink writes transformed changes to their destinations. PGSink
// applies them to the new database: source transactions in commit order,
// several per target transaction, statements pipelined, and the checkpoint
// written in the same target transaction as the rows it covers. It
// executes what transform renders and does not build SQL of its own beyond
// transaction control; group.go compacts a table's changes per key,
// staged.go stages rows for set-based statements.
package sink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/checkpoint"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

// Cause says which source change a statement came from, rendered only
// when it fails.
type Cause struct {
	Table  string // target table
	Change *change.Change
	What   string // for statements that are not row changes
	// NeedRow marks a statement that must find its row (an UPDATE that
	// leaves unchanged TOAST values in place); when it matches none, the
	// origin is reported by TakeMissing.
	NeedRow bool
}

func (o Cause) String() string {
	if o.Change == nil {
		return o.What
	}
	c := o.Change
	s := fmt.Sprintf("%s into %s", c.Op, o.Table)
	if c.Op == change.Delete || c.Op == change.Update {
		s = fmt.Sprintf("%s of %s", c.Op, o.Table)
	}
	if c.Rel != nil {
		s += fmt.Sprintf(" (source %s, %s)", c.Rel.QualifiedName(), RowKey(c))
	}
	return s
}

// RowKey renders a change's source key columns as name=value pairs.
func RowKey(c *change.Change) string {
	tuple := c.New
	if c.Op == change.Delete || tuple == nil {
		tuple = c.Old
	}
	var parts []string
	for i, col := range c.Rel.Columns {
		if !col.Key || i >= len(tuple) {
			continue
		}
		v := "NULL"
		if tuple[i].Kind == change.Text {
			v = string(tuple[i].Data)
		}
		parts = append(parts, col.Name+"="+v)
	}
	return strings.Join(parts, " ")
}

// ApplyError is a statement the target refused.
type ApplyError struct {
	Cause Cause
	Err   error
}

func (e *ApplyError) Error() string {
	var pgErr *pgconn.PgError
	if errors.As(e.Err, &pgErr) && pgErr.Code == "23505" {
		return fmt.Sprintf("apply %s: conflicts with unique constraint %s of the new schema (%s); tandem never overwrites another row: fix the row on the old database or relax the constraint, then restart",
			e.Cause, pgErr.ConstraintName, pgErr.Detail)
	}
	return fmt.Sprintf("apply %s: %v", e.Cause, e.Err)
}

func (e *ApplyError) Unwrap() error { return e.Err }

// PGSink applies statements to the target over one connection.
type PGSink struct {
	conn      *pgx.Conn
	store     checkpoint.Store
	log       *slog.Logger
	batchSize int

	prepared map[string]string
	batch    *pgconn.Batch
	causes   []Cause
	inTx     bool
	missing  []Cause
	// staging lists the session's staging tables created so far.
	staging map[string]bool
	// timeout bounds each call to the target (apply.statement_timeout).
	timeout time.Duration
}

// SetTimeout bounds every call to the target from now on: a batch, a COPY,
// a query, a commit. A link that stops carrying bytes without closing
// would otherwise hang the applier for good; with a deadline the call
// fails, the connection is closed and the pipeline resumes from its
// checkpoint. The bound must exceed the longest legitimate call: the COPY
// of the largest backfill chunk.
func (s *PGSink) SetTimeout(d time.Duration) { s.timeout = d }

// bound derives the context of one call.
func (s *PGSink) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if s.timeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, s.timeout)
}

// TakeMissing returns (and forgets) the NeedRow statements that matched no
// row since the last call.
func (s *PGSink) TakeMissing() []Cause {
	m := s.missing
	s.missing = nil
	return m
}

// NewPGSink wraps an open target connection.
func NewPGSink(conn *pgx.Conn, store checkpoint.Store, batchSize int, log *slog.Logger) *PGSink {
	return &PGSink{conn: conn, store: store, log: log, batchSize: batchSize, prepared: map[string]string{}, batch: &pgconn.Batch{}, staging: map[string]bool{}}
}

// Conn is the target connection (for catalog lookups between batches).
func (s *PGSink) Conn() *pgx.Conn { return s.conn }

// InTx reports whether a target transaction is open.
func (s *PGSink) InTx() bool { return s.inTx }

func (s *PGSink) begin() {
	if !s.inTx {
		s.batch.ExecParams("BEGIN", nil, nil, nil, nil)
		s.causes = append(s.causes, Cause{What: "BEGIN"})
		s.inTx = true
	}
}

func (s *PGSink) statement(ctx context.Context, sql string) (string, error) {
	if name, ok := s.prepared[sql]; ok {
		return name, nil
	}
	// Preparing needs the connection idle: send what is queued first.
	if len(s.causes) > 0 {
		if err := s.Flush(ctx); err != nil {
			return "", err
		}
	}
	name := fmt.Sprintf("tandem_%d", len(s.prepared)+1)
	ctx, cancel := s.bound(ctx)
	defer cancel()
	if _, err := s.conn.PgConn().Prepare(ctx, name, sql, nil); err != nil {
		return "", fmt.Errorf("prepare on target: %w", err)
	}
	s.prepared[sql] = name
	return name, nil
}

// Queue adds one statement to the open target transaction, opening one if
// needed; it sends the batch once it is full.
func (s *PGSink) Queue(ctx context.Context, st transform.Stmt, o Cause) error {
	name, err := s.statement(ctx, st.SQL)
	if err != nil {
		// A failure of the batch sent to free the connection already names
		// its own statement; only a failed PREPARE is this change's.
		var ae *ApplyError
		if errors.As(err, &ae) {
			return err
		}
		return &ApplyError{Cause: o, Err: err}
	}
	s.begin()
	s.batch.ExecPrepared(name, st.Params, nil, nil)
	s.causes = append(s.causes, o)
	if len(s.causes) >= s.batchSize {
		return s.Flush(ctx)
	}
	return nil
}

// Flush sends what is queued and reports the first statement that failed.
// After an error the target transaction is gone; the caller restarts from
// the checkpoint.
func (s *PGSink) Flush(ctx context.Context) error {
	if len(s.causes) == 0 {
		return nil
	}
	batch, causes := s.batch, s.causes
	s.batch, s.causes = &pgconn.Batch{}, s.causes[:0:0]
	ctx, cancel := s.bound(ctx)
	defer cancel()
	mrr := s.conn.PgConn().ExecBatch(ctx, batch)
	var first error
	i := 0
	for ; mrr.NextResult(); i++ {
		tag, err := mrr.ResultReader().Close()
		if err != nil && first == nil {
			first = &ApplyError{Cause: causes[min(i, len(causes)-1)], Err: s.callError(ctx, err)}
		}
		if err == nil && i < len(causes) && causes[i].NeedRow && tag.RowsAffected() == 0 {
			s.missing = append(s.missing, causes[i])
		}
	}
	if err := mrr.Close(); err != nil && first == nil {
		// A value the target cannot parse fails at bind time, before its
		// result starts: it belongs to the first statement without one.
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			first = &ApplyError{Cause: causes[min(i, len(causes)-1)], Err: err}
		} else {
			first = s.callError(ctx, err)
		}
	}
	if first != nil {
		s.inTx = false
		s.missing = nil
		s.abort()
	}
	return first
}

// CopyIn runs ddl (if any) and then copySQL with rows (COPY text format)
// inside the open transaction, after sending what is queued.
func (s *PGSink) CopyIn(ctx context.Context, ddl, copySQL string, rows io.Reader, o Cause) error {
	s.begin()
	if err := s.Flush(ctx); err != nil { // BEGIN and what was queued
		return err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	if ddl != "" {
		if _, err := s.conn.PgConn().Exec(ctx, ddl).ReadAll(); err != nil {
			s.inTx = false
			s.abort()
			return &ApplyError{Cause: o, Err: s.callError(ctx, err)}
		}
	}
	if _, err := s.conn.PgConn().CopyFrom(ctx, rows, copySQL); err != nil {
		s.inTx = false
		s.abort()
		return &ApplyError{Cause: o, Err: s.callError(ctx, err)}
	}
	return nil
}

// QueryBool runs a one-value query inside the open transaction, after
// sending what is queued.
func (s *PGSink) QueryBool(ctx context.Context, sql string, params [][]byte, o Cause) (bool, error) {
	s.begin()
	if err := s.Flush(ctx); err != nil {
		return false, err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	res := s.conn.PgConn().ExecParams(ctx, sql, params, nil, nil, nil).Read()
	if res.Err != nil {
		s.inTx = false
		s.abort()
		return false, &ApplyError{Cause: o, Err: s.callError(ctx, res.Err)}
	}
	return len(res.Rows) == 1 && len(res.Rows[0]) == 1 && string(res.Rows[0][0]) == "t", nil
}

// Exec queues a statement with text parameters in the open transaction.
func (s *PGSink) Exec(sql string, params [][]byte, o Cause) {
	s.begin()
	s.batch.ExecParams(sql, params, nil, nil, nil)
	s.causes = append(s.causes, o)
}

// abort makes sure no half transaction stays open on a live connection.
func (s *PGSink) abort() {
	clear(s.staging)
	if s.conn.PgConn().IsClosed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5e9)
	defer cancel()
	_, _ = s.conn.Exec(ctx, "ROLLBACK")
}

// Commit writes the checkpoint lsn in the open transaction (target store)
// and commits; for a file store it saves the file after the commit. With no
// transaction open it still records lsn, so an idle stream advances.
func (s *PGSink) Commit(ctx context.Context, lsn change.LSN) error {
	s.begin()
	if sql, params, ok := s.store.TxStatement(lsn); ok {
		s.batch.ExecParams(sql, params, nil, nil, nil)
		s.causes = append(s.causes, Cause{What: "checkpoint " + lsn.String()})
	}
	s.batch.ExecParams("COMMIT", nil, nil, nil, nil)
	s.causes = append(s.causes, Cause{What: "COMMIT"})
	if err := s.Flush(ctx); err != nil {
		return err
	}
	s.inTx = false
	if err := s.store.SaveCommitted(ctx, lsn); err != nil {
		return fmt.Errorf("rows up to %s are committed on the target but the checkpoint file was not saved: %w", lsn, err)
	}
	return nil
}

// Rollback abandons the open transaction (shutdown mid-transaction).
func (s *PGSink) Rollback(ctx context.Context) error {
	s.batch, s.causes = &pgconn.Batch{}, nil
	clear(s.staging)
	if !s.inTx {
		return nil
	}
	s.inTx = false
	ctx, cancel := s.bound(ctx)
	defer cancel()
	_, err := s.conn.Exec(ctx, "ROLLBACK")
	return err
}

// TimeoutError is a call to the target that did not finish within
// apply.statement_timeout; the connection is closed and the pipeline
// resumes from its checkpoint.
type TimeoutError struct {
	Timeout time.Duration
	Err     error
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("target: no answer within %s (apply.statement_timeout): the link or the new database is unresponsive, or a statement waited that long (for a lock?); reconnecting: %v", e.Timeout, e.Err)
}

func (e *TimeoutError) Unwrap() error { return e.Err }

// callError names a deadline that expired as the apply timeout rather than
// as whatever the driver reported; other errors pass through.
func (s *PGSink) callError(ctx context.Context, err error) error {
	if s.timeout > 0 && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return &TimeoutError{Timeout: s.timeout, Err: context.DeadlineExceeded}
	}
	if _, ok := err.(*pgconn.PgError); ok {
		return err
	}
	return fmt.Errorf("target: %w", err)
}
