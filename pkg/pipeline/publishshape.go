package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/sink"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

// The two shapes of a published row: the old database's row as it came
// (old), or the row the mapping makes of it in the new schema (new),
// computed by the new database in one query per mapping and flush.

// projBatch collects the source tuples of one mapping for one
// projection query, and holds its result.
type projBatch struct {
	sql  string
	proj transform.Projection
	full []bool
	cols [][]*string
	// rows are the results: each mapped column's text (nil: NULL), then
	// the filter's verdict.
	rows [][][]byte
}

func (pub *publisher) batch(ctx context.Context, m *transform.Mapping) (*projBatch, error) {
	b := pub.batches[m]
	if b == nil {
		b = &projBatch{sql: m.ProjectSQL(), proj: m.Projection(), cols: make([][]*string, len(m.Source))}
		var err error
		if b.proj.Types, err = pub.types.of(ctx, b.proj.Types); err != nil {
			return nil, err
		}
		pub.batches[m] = b
	}
	if len(b.full) == 0 {
		pub.dirty = append(pub.dirty, m)
	}
	return b, nil
}

// add queues one tuple; an unchanged TOAST value is taken from old when
// the old database sent it (REPLICA IDENTITY FULL), as the applier does.
func (b *projBatch) add(tuple, old []change.Value, full bool) int {
	for i := range b.cols {
		var v *string
		if i < len(tuple) {
			switch t := tuple[i]; {
			case t.Kind == change.Text:
				s := string(t.Data)
				v = &s
			case t.Kind == change.Unchanged && old != nil && i < len(old) && old[i].Kind == change.Text:
				s := string(old[i].Data)
				v = &s
			}
		}
		b.cols[i] = append(b.cols[i], v)
	}
	b.full = append(b.full, full)
	return len(b.full) - 1
}

func (b *projBatch) addRaw(row [][]byte) int {
	for i := range b.cols {
		var v *string
		if i < len(row) && row[i] != nil {
			s := string(row[i])
			v = &s
		}
		b.cols[i] = append(b.cols[i], v)
	}
	b.full = append(b.full, true)
	return len(b.full) - 1
}

// params renders the batch's arrays as text-format parameters.
func (b *projBatch) params() [][]byte {
	p := make([][]byte, 0, len(b.cols)+1)
	bools := []byte{'{'}
	for i, f := range b.full {
		if i > 0 {
			bools = append(bools, ',')
		}
		if f {
			bools = append(bools, 't')
		} else {
			bools = append(bools, 'f')
		}
	}
	p = append(p, append(bools, '}'))
	for _, col := range b.cols {
		p = append(p, arrayLiteral(col))
	}
	return p
}

// arrayLiteral is a text[] in PostgreSQL's array input syntax; nil is
// NULL.
func arrayLiteral(vals []*string) []byte {
	out := []byte{'{'}
	for i, v := range vals {
		if i > 0 {
			out = append(out, ',')
		}
		if v == nil {
			out = append(out, "NULL"...)
			continue
		}
		out = append(out, '"')
		for j := 0; j < len(*v); j++ {
			if c := (*v)[j]; c == '"' || c == '\\' {
				out = append(out, '\\', c)
			} else {
				out = append(out, c)
			}
		}
		out = append(out, '"')
	}
	return append(out, '}')
}

// runAll evaluates every dirty batch in one round trip, reading results
// in text format: each type's own output.
func (pub *publisher) runAll(ctx context.Context) error {
	batch := &pgconn.Batch{}
	for _, m := range pub.dirty {
		b := pub.batches[m]
		batch.ExecParams(b.sql, b.params(), nil, nil, []int16{pgx.TextFormatCode})
	}
	mrr := pub.proj.PgConn().ExecBatch(ctx, batch)
	var first error
	for i := 0; mrr.NextResult(); i++ {
		rr := mrr.ResultReader()
		if i >= len(pub.dirty) {
			_, _ = rr.Close()
			continue
		}
		m := pub.dirty[i]
		b := pub.batches[m]
		b.rows = b.rows[:0]
		for rr.NextRow() {
			raw := rr.Values()
			row := make([][]byte, len(raw))
			for j, v := range raw {
				if v != nil {
					row[j] = bytes.Clone(v)
				}
			}
			b.rows = append(b.rows, row)
		}
		_, err := rr.Close()
		switch {
		case err != nil && first == nil:
			first = fmt.Errorf("publish: evaluate the mapping of %s on the new database: %w", m.SourceName, err)
		case err == nil && len(b.rows) != len(b.full) && first == nil:
			first = fmt.Errorf("publish: the projection of %s returned %d rows for %d", m.SourceName, len(b.rows), len(b.full))
		}
	}
	if err := mrr.Close(); err != nil && first == nil {
		first = fmt.Errorf("publish: evaluate the mappings on the new database: %w", err)
	}
	return first
}

func (b *projBatch) reset() {
	b.full = b.full[:0]
	for i := range b.cols {
		clear(b.cols[i])
		b.cols[i] = b.cols[i][:0]
	}
}

// project evaluates the mapping over every buffered tuple, one query per
// mapping.
func (pub *publisher) project(ctx context.Context) error {
	for i := range pub.items {
		it := &pub.items[i]
		switch {
		case it.end:
		case it.chunk != nil:
			b, err := pub.batch(ctx, it.chunk.Job.Mapping)
			if err != nil {
				return err
			}
			first := -1
			for _, row := range it.chunk.Rows {
				if n := b.addRaw(row); first < 0 {
					first = n
				}
			}
			it.proj = []projected{{newRow: first, oldRow: -1}}
		case it.c.Op != change.Truncate:
			c := it.c
			wholeOld := c.Rel.ReplicaIdentity == 'f'
			it.proj = it.proj[:0]
			for _, m := range it.maps[0] {
				b, err := pub.batch(ctx, m)
				if err != nil {
					return err
				}
				pr := projected{newRow: -1, oldRow: -1}
				if c.New != nil {
					pr.newRow = b.add(c.New, c.Old, true)
				}
				if c.Old != nil {
					pr.oldRow = b.add(c.Old, nil, wholeOld)
				}
				it.proj = append(it.proj, pr)
			}
		}
	}
	err := pub.runAll(ctx)
	for _, m := range pub.dirty {
		pub.batches[m].reset()
	}
	pub.dirty = pub.dirty[:0]
	return err
}

// passes reads the filter's verdict of a projected row.
func passes(row [][]byte) bool { return string(row[len(row)-1]) == "true" }

func projFields(p transform.Projection, row [][]byte, idx []int, skip []bool) []sink.Field {
	out := make([]sink.Field, 0, len(p.Columns))
	add := func(i int) {
		if skip == nil || !skip[i] {
			out = append(out, sink.Field{Name: p.Columns[i].Name, Type: p.Types[i], Text: row[i], Null: row[i] == nil})
		}
	}
	if idx != nil {
		for _, i := range idx {
			add(i)
		}
		return out
	}
	for i := range p.Columns {
		add(i)
	}
	return out
}

func sameKey(p transform.Projection, a, b [][]byte) bool {
	for _, i := range p.Key {
		if (a[i] == nil) != (b[i] == nil) || !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// newShape is the message for one mapping of a change. An insert that
// fails the filter is not published (the new table never had the row);
// an update that fails it is a delete (the row leaves the new table).
func (pub *publisher) newShape(m *transform.Mapping, c *change.Change, pr projected) (sink.Event, bool) {
	b := pub.batches[m]
	p := b.proj
	ev := sink.Event{Op: c.Op.String(), Schema: m.Target.Schema, Table: m.Target.Name}
	var old [][]byte
	if pr.oldRow >= 0 {
		old = b.rows[pr.oldRow]
		if c.Rel.ReplicaIdentity == 'f' {
			ev.Before = projFields(p, old, nil, nil)
		}
	}
	if c.Op == change.Delete {
		ev.Key = projFields(p, old, p.Key, nil)
		return ev, true
	}
	row := b.rows[pr.newRow]
	if old != nil && !sameKey(p, old, row) {
		ev.OldKey = projFields(p, old, p.Key, nil)
	}
	if !passes(row) {
		if c.Op == change.Insert {
			return ev, false
		}
		ev.Op, ev.Before = change.Delete.String(), nil
		ev.Key = projFields(p, row, p.Key, nil)
		if ev.OldKey != nil {
			ev.Key, ev.OldKey = ev.OldKey, nil
		}
		return ev, true
	}
	ev.Key = projFields(p, row, p.Key, nil)
	// Columns computed from an out-of-line value the old database did not
	// send keep their value on the new database; the message says which.
	var skip []bool
	if src := unchangedMask(c); src != nil {
		skip = make([]bool, len(p.Columns))
		for i := range p.Columns {
			if p.DependsOn(i, src) {
				skip[i] = true
				ev.Unchanged = append(ev.Unchanged, p.Columns[i].Name)
			}
		}
	}
	ev.After = projFields(p, row, nil, skip)
	return ev, true
}

// unchangedMask marks the new tuple's values that were not sent and not
// recoverable from a whole old row; nil when there are none.
func unchangedMask(c *change.Change) []bool {
	var mask []bool
	for i, v := range c.New {
		if v.Kind != change.Unchanged || (c.Old != nil && i < len(c.Old) && c.Old[i].Kind == change.Text) {
			continue
		}
		if mask == nil {
			mask = make([]bool, len(c.New))
		}
		mask[i] = true
	}
	return mask
}

// oldShape is the message of a change as the old database sent it. The
// key is the replica identity's columns; with REPLICA IDENTITY FULL that
// is every column.
func oldShape(c *change.Change, types []uint32) sink.Event {
	rel := c.Rel
	ev := sink.Event{Op: c.Op.String(), Schema: rel.Schema, Table: rel.Name}
	if c.Old != nil && rel.ReplicaIdentity == 'f' {
		ev.Before = tupleFields(rel, types, c.Old, nil, false, nil)
	}
	if c.Op == change.Delete {
		ev.Key = tupleFields(rel, types, c.Old, nil, true, nil)
		return ev
	}
	ev.Key = tupleFields(rel, types, c.New, c.Old, true, nil)
	if c.Old != nil {
		if old := tupleFields(rel, types, c.Old, nil, true, nil); !sameFields(old, ev.Key) {
			ev.OldKey = old
		}
	}
	ev.After = tupleFields(rel, types, c.New, c.Old, false, &ev.Unchanged)
	return ev
}

// tupleFields renders a tuple's columns (only the replica identity's with
// keyOnly). A value not sent is taken from old when it has it, else
// listed in unchanged.
func tupleFields(rel *change.Relation, types []uint32, tuple, old []change.Value, keyOnly bool, unchanged *[]string) []sink.Field {
	out := make([]sink.Field, 0, len(rel.Columns))
	for i, col := range rel.Columns {
		if (keyOnly && !col.Key) || i >= len(tuple) {
			continue
		}
		v := tuple[i]
		if v.Kind == change.Unchanged && old != nil && i < len(old) && old[i].Kind == change.Text {
			v = old[i]
		}
		if v.Kind == change.Unchanged {
			if unchanged != nil {
				*unchanged = append(*unchanged, col.Name)
			}
			continue
		}
		out = append(out, sink.Field{Name: col.Name, Type: types[i], Text: v.Data, Null: v.Kind == change.Null})
	}
	return out
}

func sameFields(a, b []sink.Field) bool {
	return slices.EqualFunc(a, b, func(x, y sink.Field) bool {
		return x.Name == y.Name && x.Null == y.Null && bytes.Equal(x.Text, y.Text)
	})
}

// readEvents are the messages of a backfill chunk's rows (op read).
func (pub *publisher) readEvents(dst []sink.Event, it *pubItem) []sink.Event {
	j := it.chunk.Job
	m := j.Mapping
	if pub.proj != nil {
		b := pub.batches[m]
		p := b.proj
		for k := range it.chunk.Rows {
			row := b.rows[it.proj[0].newRow+k]
			if passes(row) {
				dst = append(dst, sink.Event{Op: sink.OpRead, Schema: m.Target.Schema, Table: m.Target.Name,
					Key: projFields(p, row, p.Key, nil), After: projFields(p, row, nil, nil)})
			}
		}
		return dst
	}
	types := pub.srcTypes[m]
	for _, row := range it.chunk.Rows {
		ev := sink.Event{Op: sink.OpRead, Schema: j.Source.Schema, Table: j.Source.Name}
		for i, sc := range m.Source {
			f := sink.Field{Name: sc.Name, Type: types[i], Text: row[i], Null: row[i] == nil}
			ev.After = append(ev.After, f)
			// The replica identity, as the stream's messages of the table.
			if sc.Identity {
				ev.Key = append(ev.Key, f)
			}
		}
		dst = append(dst, ev)
	}
	return dst
}
