package pipeline

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/backfill"
	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/sink"
)

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
	// The row is read with the statement's own snapshot. The walsender can
	// send a commit before the old database shows it to other sessions
	// (field notes; the backfill hits the same window): reading then would
	// return the row as it was before this very update. So the read is
	// repeated until its snapshot shows the change's transaction.
	q := fmt.Sprintf("SELECT s.snap, t.* FROM (SELECT pg_current_snapshot()::text AS snap) s LEFT JOIN LATERAL (SELECT true, %s FROM %s WHERE %s) t ON true",
		strings.Join(cols, ", "), pgx.Identifier{c.Rel.Schema, c.Rel.Name}.Sanitize(), strings.Join(where, " AND "))
	// The old database's link gets the same bound as the new one's.
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Apply.StatementTimeout)
	defer cancel()
	var row []change.Value
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		var visible bool
		var err error
		row, visible, err = a.fetchRow(ctx, q, params, c.XID)
		if err != nil {
			return fmt.Errorf("fetch %s (%s) from source: %w", c.Rel.QualifiedName(), sink.RowKey(c), err)
		}
		if visible {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("fetch %s (%s) from source: transaction %d, already streamed, is still not visible there: %w", c.Rel.QualifiedName(), sink.RowKey(c), c.XID, ctx.Err())
		case <-time.After(wait):
		}
	}
	if row == nil {
		return nil // deleted since; its DELETE follows in the stream
	}
	ins := &change.Change{Op: change.Insert, Rel: c.Rel, New: row}
	return a.onChangeMapped(ctx, ins, false)
}

// fetchRow runs a refetch query: its snapshot, then the row (nil when
// there is none). visible says whether the snapshot shows xid (0: unknown,
// taken as shown).
func (a *applier) fetchRow(ctx context.Context, q string, params [][]byte, xid uint32) ([]change.Value, bool, error) {
	rr := a.src.PgConn().ExecParams(ctx, q, params, nil, nil, nil)
	var row []change.Value
	var snap string
	for rr.NextRow() {
		vals := rr.Values()
		snap = string(vals[0])
		if vals[1] == nil {
			continue // no such row
		}
		vals = vals[2:]
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
		return nil, false, err
	}
	if xid == 0 {
		return row, true, nil
	}
	sn, err := backfill.ParseSnapshot(snap)
	if err != nil {
		return nil, false, err
	}
	return row, sn.Visible(xid), nil
}
