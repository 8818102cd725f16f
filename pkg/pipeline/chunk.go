package pipeline

import (
	"context"
	"fmt"
	"io"

	"github.com/tandem-migrate/tandem/pkg/backfill"
	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/sink"
)

// Backfill chunks reach the applier as watermark messages in the stream;
// here they are written, in the transaction that carries the high
// watermark's commit position.

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
	cause := sink.Cause{What: fmt.Sprintf("backfill chunk of %s after key %v", j.Name(), c.Cursor)}
	// Stream changes before the high watermark must land first.
	if err := a.flushGroups(ctx); err != nil {
		return err
	}
	direct, err := a.copyDirect(ctx, c, cause)
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
		if err := a.sink.ApplyStaged(ctx, m, j.StageName(), &a.staged, cause); err != nil {
			return classifyApply(err)
		}
	}
	sql, params := backfill.ProgressStatement(a.cfg.Name, c, len(c.Rows))
	a.sink.Exec(sql, params, cause)
	a.txChanges += len(c.Rows)
	a.bf.Rows.WithLabelValues(j.Name()).Add(float64(len(c.Rows)))
	path := "upsert"
	if direct {
		path = "copy"
	}
	a.bf.Chunks.WithLabelValues(j.Name(), path, j.Format()).Inc()
	return nil
}

// copyDirect COPYs a chunk straight into the target when its rows need no
// transform and none of its keys is there yet: the common case of a fresh
// range, where the staged upsert would write every row twice. The check
// and the COPY share the applier's transaction, and the applier is the
// target's only writer, so nothing can slip in between. It reports false
// when the chunk must take the staged path.
func (a *applier) copyDirect(ctx context.Context, c *backfill.Chunk, o sink.Cause) (bool, error) {
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
