package pipeline

import (
	"context"
	"fmt"
	"io"

	"github.com/tandem-migrate/tandem/pkg/backfill"
	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/sink"
	"github.com/tandem-migrate/tandem/pkg/transform"
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

// applyChunk writes a chunk at its high watermark, in the transaction that
// will carry the watermark's commit position.
func (a *applier) applyChunk(ctx context.Context, c *backfill.Chunk) error {
	defer c.Release()
	j := c.Job
	// Stream changes before the high watermark must land first.
	if err := a.flushGroups(ctx); err != nil {
		return err
	}
	if err := a.pub.chunk(ctx, c); err != nil {
		return err
	}
	t := chunkTarget{s: a.sink, cause: sink.Cause{What: fmt.Sprintf("backfill chunk of %s after key %v", j.Name(), c.Cursor)}}
	path, err := c.Write(ctx, t, &a.staged, a.cfg.Name)
	if err != nil {
		return classifyApply(err)
	}
	a.txChanges += len(c.Rows)
	a.bf.Rows.WithLabelValues(j.Name()).Add(float64(len(c.Rows)))
	a.bf.Chunks.WithLabelValues(j.Name(), path, j.Format()).Inc()
	return nil
}

// chunkTarget is the applier's open transaction as a chunk sees it, every
// statement blamed on the chunk if it fails.
type chunkTarget struct {
	s     *sink.PGSink
	cause sink.Cause
}

var _ backfill.Target = chunkTarget{}

func (t chunkTarget) QueryBool(ctx context.Context, sql string, params [][]byte) (bool, error) {
	return t.s.QueryBool(ctx, sql, params, t.cause)
}

func (t chunkTarget) CopyIn(ctx context.Context, copySQL string, rows io.Reader) error {
	return t.s.CopyIn(ctx, "", copySQL, rows, t.cause)
}

func (t chunkTarget) ApplyStaged(ctx context.Context, m *transform.Mapping, stage string, st *sink.Staged) error {
	return t.s.ApplyStaged(ctx, m, stage, st, t.cause)
}

func (t chunkTarget) Exec(sql string, params [][]byte) { t.s.Exec(sql, params, t.cause) }
