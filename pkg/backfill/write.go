package backfill

import (
	"context"
	"io"

	"github.com/tandem-migrate/tandem/pkg/sink"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

// Target is what writing a chunk needs of the applier's open transaction on
// the new database. The applier hands it over at the high watermark and
// commits afterwards; how a chunk becomes rows stays here.
type Target interface {
	QueryBool(ctx context.Context, sql string, params [][]byte) (bool, error)
	CopyIn(ctx context.Context, copySQL string, rows io.Reader) error
	ApplyStaged(ctx context.Context, m *transform.Mapping, stage string, st *sink.Staged) error
	Exec(sql string, params [][]byte)
}

// Write writes the chunk into t's open transaction: COPY straight into the
// table when that is safe (see writeDirect), otherwise staged and upserted
// through the mapping, then the chunk's progress for migration, so the rows
// and the cursor commit together. staged is a reusable buffer. It returns
// the path taken, "copy" or "upsert", for the metrics.
func (c *Chunk) Write(ctx context.Context, t Target, staged *sink.Staged, migration string) (string, error) {
	j := c.Job
	direct, err := c.writeDirect(ctx, t, staged)
	if err != nil {
		return "", err
	}
	path := "copy"
	if !direct {
		path = "upsert"
		if j.binary {
			staged.ResetBinary()
			staged.AddBinaryRows(c.Body, len(c.Rows))
		} else {
			staged.Reset()
			for _, row := range c.Rows {
				staged.AddRaw('u', row)
			}
		}
		if err := t.ApplyStaged(ctx, j.Mapping, j.stage, staged); err != nil {
			return "", err
		}
	}
	sql, params := ProgressStatement(migration, c, len(c.Rows))
	t.Exec(sql, params)
	return path, nil
}

// writeDirect COPYs a chunk straight into the target when its rows need no
// transform and none of its keys is there yet: the common case of a fresh
// range, where the staged upsert would write every row twice. The check
// and the COPY share the applier's transaction, and the applier is the
// target's only writer, so nothing can slip in between. It reports false
// when the chunk must take the staged path.
func (c *Chunk) writeDirect(ctx context.Context, t Target, staged *sink.Staged) (bool, error) {
	j, rows := c.Job, c.Rows
	m := j.Mapping
	d, ok := j.directCopy()
	if !ok || len(rows) == 0 {
		return false, nil
	}
	key := j.textIndex(d.KeySrc[0])
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
		sql, params = m.AnyKeySQL(d), [][]byte{[]byte(ArrayLiteral(first))}
	}
	present, err := t.QueryBool(ctx, sql, params)
	if err != nil || present {
		return false, err
	}
	var data io.Reader
	if j.binary {
		data = sink.BinaryCopy(c.Body)
	} else {
		staged.Reset()
		for _, row := range rows {
			staged.AddColumns(row, d.Source)
		}
		data = staged.Reader()
	}
	if err := t.CopyIn(ctx, m.CopySQL(d), data); err != nil {
		return false, err
	}
	return true, nil
}
