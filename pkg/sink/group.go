package sink

import (
	"context"

	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

// Group compacts one mapping's changes within a target transaction to the
// net effect per row: the last image of each key, and whether the key was
// deleted before it. Applied set-based, that is the same end state as
// applying every change in order, because the mapping is Groupable: no
// other unique constraint or foreign key can observe the order in between.
// Memory is bounded by the caller flushing at a size limit.
type Group struct {
	Mapping *transform.Mapping
	Stage   string
	order   []string
	rows    map[string]*groupRow
	bytes   int
	staged  Staged
	rel     *change.Relation // latest shape seen, to name rows in errors
}

type groupRow struct {
	del []change.Value // key image to delete first (nil: none)
	up  []change.Value // last full image (nil: none)
}

// NewGroup returns an empty group.
func NewGroup(m *transform.Mapping, stage string) *Group {
	return &Group{Mapping: m, Stage: stage, rows: map[string]*groupRow{}}
}

// Len is the number of keys held; Bytes their approximate size.
func (g *Group) Len() int   { return len(g.order) }
func (g *Group) Bytes() int { return g.bytes }

func (g *Group) row(k string) *groupRow {
	r, ok := g.rows[k]
	if !ok {
		r = &groupRow{}
		g.rows[k] = r
		g.order = append(g.order, k)
	}
	return r
}

func size(t []change.Value) int {
	n := 0
	for _, v := range t {
		n += len(v.Data) + 8
	}
	return n
}

// Add folds one change in; false means it cannot be folded (an unchanged
// TOAST value with no earlier image to take it from) and must be applied
// in order after the group is flushed.
func (g *Group) Add(c *change.Change) bool {
	m := g.Mapping
	g.rel = c.Rel
	switch c.Op {
	case change.Insert, change.Update:
		newKey, ok := m.RowKey(c.New)
		if !ok {
			return false
		}
		var oldKey string
		moved := false
		if c.Op == change.Update && c.Old != nil {
			if k, ok := m.RowKey(c.Old); ok && k != newKey {
				oldKey, moved = k, true
			}
		}
		prev := g.rows[newKey]
		if moved {
			prev = g.rows[oldKey]
		}
		img, ok := fill(c.New, c.Old, prev)
		if !ok {
			return false
		}
		if moved {
			old := g.row(oldKey)
			if old.del == nil {
				old.del = c.Old
			}
			old.up = nil
		}
		r := g.row(newKey)
		r.up = img
		g.bytes += size(img)
		return true
	case change.Delete:
		if c.Old == nil {
			return false
		}
		k, ok := m.RowKey(c.Old)
		if !ok {
			return false
		}
		r := g.row(k)
		if r.del == nil {
			r.del = c.Old
		}
		r.up = nil
		g.bytes += size(c.Old)
		return true
	}
	return false
}

// fill completes a new image whose unchanged TOAST values were not sent,
// from the old row (REPLICA IDENTITY FULL) or the image held for the key.
func fill(img, old []change.Value, prev *groupRow) ([]change.Value, bool) {
	var out []change.Value
	for i, v := range img {
		if v.Kind != change.Unchanged {
			continue
		}
		if out == nil {
			out = append([]change.Value(nil), img...)
		}
		switch {
		case old != nil && old[i].Kind == change.Text:
			out[i] = old[i]
		case prev != nil && prev.up != nil && prev.up[i].Kind != change.Unchanged:
			out[i] = prev.up[i]
		default:
			return nil, false
		}
	}
	if out == nil {
		return img, true
	}
	return out, true
}

// Stage renders the net changes into the staging buffer and empties the
// group; deletes are staged before images.
func (g *Group) stage() *Staged {
	g.staged.Reset()
	for _, k := range g.order {
		if r := g.rows[k]; r.del != nil {
			g.staged.AddTuple('d', r.del)
		}
	}
	for _, k := range g.order {
		if r := g.rows[k]; r.up != nil {
			g.staged.AddTuple('u', r.up)
		}
	}
	g.reset()
	return &g.staged
}

func (g *Group) reset() {
	clear(g.rows)
	g.order = g.order[:0]
	g.bytes = 0
}

// smallGroup is the size under which a group is written as pipelined row
// statements: staging it costs round trips that a handful of rows does not
// repay, and the stream's latency is made of small transactions.
const smallGroup = 64

// FlushGroup writes the group's net changes in the open transaction:
// deletes first, then images, as row statements for a small group and
// set-based through the staging table for a large one.
func (s *PGSink) FlushGroup(ctx context.Context, g *Group) error {
	if g.Len() == 0 {
		return nil
	}
	if g.Len() >= smallGroup {
		return s.ApplyStaged(ctx, g.Mapping, g.Stage, g.stage(), Cause{What: "grouped changes of " + g.Mapping.TargetName})
	}
	m := g.Mapping
	queue := func(c *change.Change) error {
		sts, err := m.Statements(nil, c)
		if err != nil {
			return err
		}
		for _, st := range sts {
			if err := s.Queue(ctx, st, Cause{Table: m.TargetName, Change: c}); err != nil {
				return err
			}
		}
		return nil
	}
	rel := g.rel
	for _, k := range g.order {
		if r := g.rows[k]; r.del != nil {
			if err := queue(&change.Change{Op: change.Delete, Rel: rel, Old: r.del}); err != nil {
				return err
			}
		}
	}
	for _, k := range g.order {
		if r := g.rows[k]; r.up != nil {
			if err := queue(&change.Change{Op: change.Insert, Rel: rel, New: r.up}); err != nil {
				return err
			}
		}
	}
	g.reset()
	return nil
}
