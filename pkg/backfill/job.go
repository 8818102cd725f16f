package backfill

import (
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/checkpoint"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

// Job is the backfill of one mapping (source table -> target table).
type Job struct {
	Field   string
	Source  *catalog.Table
	Mapping *transform.Mapping
	// Key are the source columns chunks are paged by.
	Key    []string
	keyIdx []int // source column positions of Key, as in stream tuples
	// rowKeyIdx are the positions of Key's text values in a chunk row.
	rowKeyIdx []int
	// Progress as loaded at start.
	Progress checkpoint.Progress
	stage    string
	// binary jobs read every source column in binary (see
	// transform.DirectCopy.Binary) into a ready COPY body and, after them,
	// the columns in textSrc again as text, which become the chunk's Rows:
	// keys must be compared with the stream's text values and bound as
	// text parameters.
	binary  bool
	textSrc []int
	// direct is the mapping's DirectCopy, computed once (ok in isDirect).
	direct   transform.DirectCopy
	isDirect bool
}

// NewJob plans the backfill of one mapping. The source needs a primary key
// or a unique replica identity index to page by.
func NewJob(field string, src *catalog.Table, m *transform.Mapping, index int) (*Job, error) {
	key := src.PrimaryKey
	if len(key) == 0 && src.ReplicaIdentity == 'i' {
		key = src.IdentityColumns()
	}
	if len(key) == 0 {
		return nil, fmt.Errorf("%s.source: table %s has no primary key or unique replica identity index to copy it by in chunks: add a primary key (or set backfill.enabled: false and copy it yourself)", field, src)
	}
	idx, err := m.SourceIndexes(key)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	j := &Job{Field: field, Source: src, Mapping: m, Key: key, keyIdx: idx, rowKeyIdx: idx, stage: fmt.Sprintf("tandem_stage_%d", index)}
	j.direct, j.isDirect = m.Direct()
	if d := j.direct; j.isDirect && d.Binary {
		j.binary = true
		for _, i := range append(append([]int(nil), idx...), d.KeySrc...) {
			if !slices.Contains(j.textSrc, i) {
				j.textSrc = append(j.textSrc, i)
			}
		}
		j.rowKeyIdx = make([]int, len(idx))
		for i, k := range idx {
			j.rowKeyIdx[i] = j.textIndex(k)
		}
	}
	return j, nil
}

// directCopy is the job's mapping's Direct, computed once for the job (the
// mapping a job copies with does not change under it).
func (j *Job) directCopy() (transform.DirectCopy, bool) { return j.direct, j.isDirect }

// Format names the format chunk rows travel in, for logs and metrics.
func (j *Job) Format() string {
	if j.binary {
		return "binary"
	}
	return "text"
}

// textIndex is where a chunk row holds the text form of source column
// src; for a binary job only key columns have one.
func (j *Job) textIndex(src int) int {
	if !j.binary {
		return src
	}
	return slices.Index(j.textSrc, src)
}

// resultFormats are the chunk read's result formats (nil: all text).
func (j *Job) resultFormats() []int16 {
	if !j.binary {
		return nil
	}
	f := make([]int16, len(j.Mapping.Source)+len(j.textSrc))
	for i := range j.Mapping.Source {
		f[i] = 1
	}
	return f
}

func (j *Job) rowKey(row [][]byte) string { return change.RawKey(row, j.rowKeyIdx) }

// Name is "source -> target" for messages and metrics.
func (j *Job) Name() string { return checkpoint.MappingKey(j.Mapping.SourceName, j.Mapping.TargetName) }

// keyedQuery renders the chunk read: keyset pagination with a row-value
// comparison, so composite keys page correctly (DBZ-5071), and an upper
// bound fixed at the job's start so a table that is inserted into forever
// still finishes (newer rows arrive through the stream). Its last
// parameter is the visibility guard's xid8 array (see guardSQL).
func (j *Job) keyedQuery(hasCursor, hasBound bool, limit int) string {
	cols := make([]string, 0, len(j.Mapping.Source)+len(j.textSrc))
	for _, c := range j.Mapping.Source {
		cols = append(cols, pgx.Identifier{c.Name}.Sanitize())
	}
	for _, i := range j.textSrc {
		cols = append(cols, pgx.Identifier{j.Mapping.Source[i].Name}.Sanitize())
	}
	keyCols := make([]string, len(j.Key))
	for i, k := range j.Key {
		keyCols[i] = pgx.Identifier{k}.Sanitize()
	}
	params := func(offset int) string {
		ps := make([]string, len(j.Key))
		for i, k := range j.Key {
			ps[i] = fmt.Sprintf("$%d::%s", offset+i+1, j.Source.Column(k).Type)
		}
		return "(" + strings.Join(ps, ", ") + ")"
	}
	tuple := "(" + strings.Join(keyCols, ", ") + ")"
	var where []string
	n := 0
	if hasCursor {
		where = append(where, tuple+" > "+params(n))
		n += len(j.Key)
	}
	if hasBound {
		where = append(where, tuple+" <= "+params(n))
		n += len(j.Key)
	}
	where = append(where, guardSQL(n+1))
	q := fmt.Sprintf("SELECT %s FROM %s WHERE %s", strings.Join(cols, ", "), j.Source.QualifiedName(), strings.Join(where, " AND "))
	return fmt.Sprintf("%s ORDER BY %s LIMIT %d", q, strings.Join(keyCols, ", "), limit)
}

func (j *Job) boundQuery() string {
	keyCols := make([]string, len(j.Key))
	desc := make([]string, len(j.Key))
	for i, k := range j.Key {
		// Aliased so ORDER BY binds to the column, not to its text form.
		keyCols[i] = fmt.Sprintf("%s::text AS tandem_bound_%d", pgx.Identifier{k}.Sanitize(), i)
		desc[i] = pgx.Identifier{k}.Sanitize() + " DESC"
	}
	return fmt.Sprintf("SELECT %s FROM %s ORDER BY %s LIMIT 1", strings.Join(keyCols, ", "), j.Source.QualifiedName(), strings.Join(desc, ", "))
}

// Keys lets the applier find a change's chunk key.
func (t *Tracker) SetKeys(source string, idx []int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.keys == nil {
		t.keys = map[string][]int{}
	}
	t.keys[source] = idx
}

// TouchChange records every key a stream change affects in tables that
// have a chunk registered and not yet applied, and logs its transaction
// for the chunks registered later.
func (t *Tracker) TouchChange(c *change.Change) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.nopen == 0 && !t.logging() {
		return
	}
	if c.Op == change.Truncate {
		// Every row a chunk read before the TRUNCATE is gone.
		for _, rel := range c.Truncated {
			src := rel.QualifiedName()
			t.logLocked(src, c.XID)
			for _, ch := range t.open[src] {
				ch.truncated = true
			}
		}
		return
	}
	src := c.Rel.QualifiedName()
	t.logLocked(src, c.XID)
	chunks := t.open[src]
	if len(chunks) == 0 {
		return
	}
	idx := t.keys[src]
	var keys [2]string
	n := 0
	if c.New != nil {
		keys[n], _ = change.Key(c.New, idx)
		n++
	}
	if c.Old != nil {
		keys[n], _ = change.Key(c.Old, idx)
		n++
	}
	for _, ch := range chunks {
		for _, k := range keys[:n] {
			ch.touched[k] = struct{}{}
		}
	}
}

// ProgressStatement renders the save of an applied chunk's progress, for
// the applier's transaction.
func ProgressStatement(name string, c *Chunk, copied int) (string, [][]byte) {
	var cursor []byte
	if c.Cursor != nil {
		cursor = []byte(ArrayLiteral(c.Cursor))
	}
	return checkpoint.ProgressStatement(name, c.Job.Mapping.SourceName, c.Job.Mapping.TargetName, cursor, c.Final, copied)
}

// ArrayLiteral renders text values as a PostgreSQL array literal, every
// element quoted so commas, braces, spaces and NULL-looking text stay data.
func ArrayLiteral(vals []string) string {
	var b strings.Builder
	n := 2
	for _, v := range vals {
		n += len(v) + 3
	}
	b.Grow(n)
	b.WriteByte('{')
	for i, v := range vals {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for j := 0; j < len(v); j++ {
			if v[j] == '"' || v[j] == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(v[j])
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}
