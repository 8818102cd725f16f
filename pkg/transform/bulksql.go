package transform

import (
	"fmt"
	"hash/fnv"
	"strings"
)

// Set-based SQL: staging tables, staged upserts and deletes, and the COPY
// statements of backfill chunks.

// OpColumn is the staging table's column that says what a staged row is
// for: 'u' (upsert its image) or 'd' (delete its key).
const OpColumn = "tandem_op"

// stageDDL creates a session-local staging table shaped like the source row
// (bind types) plus OpColumn. Backfill chunks and grouped stream changes
// are COPYed into it and moved into the target set-based.
func (m *Mapping) stageDDL(stage string) string {
	cols := make([]string, len(m.Source)+1)
	for i, c := range m.Source {
		cols[i] = quote(c.Name) + " " + c.BindType
	}
	cols[len(m.Source)] = OpColumn + ` "char" NOT NULL DEFAULT 'u'`
	return fmt.Sprintf("CREATE TEMP TABLE IF NOT EXISTS %s (%s)", quote(stage), strings.Join(cols, ", "))
}

// StageName names a staging table after base and the source row's shape,
// so a table whose shape changed mid-stream gets a fresh staging table
// instead of a COPY into the old one.
func (m *Mapping) StageName(base string) string {
	h := fnv.New32a()
	for _, c := range m.Source {
		h.Write([]byte(c.Name + " " + c.BindType + ","))
	}
	return fmt.Sprintf("%s_%08x", base, h.Sum32())
}

// stagedCTE reads the staged rows for op under the alias the row
// statements use, so expressions, filter and key are the same text.
func (m *Mapping) stagedCTE(stage string, op byte) string {
	cols := make([]string, len(m.Source))
	for i, c := range m.Source {
		cols[i] = quote(c.Name)
	}
	return fmt.Sprintf("s AS (SELECT %s FROM %s WHERE %s = '%c')", strings.Join(cols, ", "), quote(stage), OpColumn, op)
}

func (m *Mapping) replaceSourceCTE(sql, with string) string {
	prefix := "WITH " + m.sourceCTE()
	if !strings.HasPrefix(sql, prefix) {
		panic("transform: statement does not start with the source CTE")
	}
	return "WITH " + with + strings.TrimPrefix(sql, prefix)
}

// stagedUpsertSQL upserts every staged 'u' row through the same expressions,
// filter (a row failing it is deleted) and conflict rule as the row
// statement, in one set-based statement. Staged keys must be unique.
func (m *Mapping) stagedUpsertSQL(stage string) string {
	return m.replaceSourceCTE(m.upsertSQL, m.stagedCTE(stage, 'u'))
}

// stagedDeleteSQL deletes the key of every staged 'd' row.
func (m *Mapping) stagedDeleteSQL(stage string) string {
	return m.replaceSourceCTE(m.deleteSQL, m.stagedCTE(stage, 'd'))
}

// KeyRangeSQL asks whether any target row has a first key column between
// two values: one index descent for a chunk read in key order.
func (m *Mapping) KeyRangeSQL(d DirectCopy) string {
	k := quote(m.Key[0])
	return fmt.Sprintf("SELECT EXISTS (SELECT 1 FROM %s t WHERE t.%s BETWEEN $1::%s AND $2::%s)",
		m.Target.QualifiedName(), k, d.KeyTypes[0], d.KeyTypes[0])
}

// AnyKeySQL asks whether any of a chunk's keys may exist in the target.
// It probes the first key column only, as "= ANY(array)", which the index
// answers key by key whatever the table's size (an IN over unnest() tends
// to plan as a scan of the whole target). For a composite key that is a
// superset test: a false positive only sends the chunk down the slower,
// always-correct staged upsert.
func (m *Mapping) AnyKeySQL(d DirectCopy) string {
	return fmt.Sprintf("SELECT EXISTS (SELECT 1 FROM %s t WHERE t.%s = ANY ($1::%s[]))",
		m.Target.QualifiedName(), quote(m.Key[0]), d.KeyTypes[0])
}

// CopySQL is the COPY that loads DirectCopy rows into the target: text
// rows of the columns in Columns order, or binary source rows as they
// stand (BySource order).
func (m *Mapping) CopySQL(d DirectCopy) string {
	names := d.Columns
	if d.Binary {
		names = d.BySource
	}
	cols := make([]string, len(names))
	for i, c := range names {
		cols[i] = quote(c)
	}
	return fmt.Sprintf("COPY %s (%s) FROM STDIN%s", m.Target.QualifiedName(), strings.Join(cols, ", "), copyFormat(d.Binary))
}

// stageCopySQL is the COPY that loads staged rows into a staging table:
// text rows carry every source column and then the op, binary rows (see
// DirectCopy.Binary) only the source columns, the op defaulting to 'u'.
func (m *Mapping) stageCopySQL(stage string, binary bool) string {
	if !binary {
		return "COPY " + quote(stage) + " FROM STDIN"
	}
	cols := make([]string, len(m.Source))
	for i, c := range m.Source {
		cols[i] = quote(c.Name)
	}
	return fmt.Sprintf("COPY %s (%s) FROM STDIN%s", quote(stage), strings.Join(cols, ", "), copyFormat(true))
}

func copyFormat(binary bool) string {
	if binary {
		return " (FORMAT binary)"
	}
	return ""
}

// StagedWrite is the SQL of one set-based write through a staging table:
// the table's DDL (when the session has none yet), the COPY into it, then
// the statements that move its rows into the target and empty it again.
// Deletes go first: a key staged for both was deleted before its last
// image was written.
type StagedWrite struct {
	DDL, Copy string
	Then      []string
}

// StagedWrite renders the write of rows staged in stage; create asks for
// the DDL, and deletes/upserts say which kinds of rows were staged.
func (m *Mapping) StagedWrite(stage string, create, binary, deletes, upserts bool) StagedWrite {
	w := StagedWrite{Copy: m.stageCopySQL(stage, binary)}
	if create {
		w.DDL = m.stageDDL(stage)
	}
	if deletes {
		w.Then = append(w.Then, m.stagedDeleteSQL(stage))
	}
	if upserts {
		w.Then = append(w.Then, m.stagedUpsertSQL(stage))
	}
	w.Then = append(w.Then, "TRUNCATE "+quote(stage))
	return w
}
