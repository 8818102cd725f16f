// Package transform maps source rows onto the target schema. A mapping is
// compiled once per table from the config and both catalogs; it renders the
// SQL the sink runs. Expressions are evaluated by the target database itself
// over the source row bound as parameters, so an expression means exactly
// what it means in SQL, and the source values cross in their text form.
package transform

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/config"
)

// firstUserOID is where user-defined objects start; built-in types exist on
// every server under the same name.
const firstUserOID = 16384

// SourceColumn is one column of the source row as bound into statements.
type SourceColumn struct {
	Name    string
	TypeOID uint32
	// BindType is the cast applied to the parameter: the source type when
	// the target knows it, text otherwise.
	BindType  string
	Toastable bool
	Identity  bool
}

// TargetColumn is one mapped target column.
type TargetColumn struct {
	Name string
	// Expr is the SQL expression over source columns.
	Expr string
	// Type is the target column's type without modifiers; the expression is
	// cast to it explicitly so text can feed an enum, and the column's own
	// modifiers then check length and scale as an INSERT would.
	Type string
	// Deps are indexes into Mapping.Source the expression may reference.
	Deps []int
}

// Mapping is the compiled form of one tables[] entry.
type Mapping struct {
	SourceName string // schema.table, as in the config
	TargetName string
	Target     *catalog.Table
	Source     []SourceColumn
	Columns    []TargetColumn
	// Key are the target key columns; each is also in Columns.
	Key    []string
	Filter string
	// filterDeps index Source.
	filterDeps []int
	keyDeps    []int
	fullIdent  bool

	upsertSQL, deleteSQL string
	partial              map[string]string
}

// Error is a mapping problem; Field names the config entry to fix.
type Error struct {
	Field string
	Msg   string
}

func (e *Error) Error() string { return e.Field + ": " + e.Msg }

// Compile builds a Mapping for one table entry. src describes the source
// columns (from the source catalog or a Relation message), tgt the target
// table. field is the config path used in errors (e.g. "tables[0]").
func Compile(field string, tc config.TableConfig, src []SourceColumn, replicaIdentity byte, tgt *catalog.Table) (*Mapping, error) {
	var errs []error
	fail := func(f, format string, args ...any) {
		errs = append(errs, &Error{Field: f, Msg: fmt.Sprintf(format, args...)})
	}
	m := &Mapping{
		SourceName: tc.Source,
		TargetName: tc.Target,
		Target:     tgt,
		Source:     src,
		Filter:     strings.TrimSpace(tc.Filter),
		fullIdent:  replicaIdentity == 'f',
		partial:    map[string]string{},
	}
	srcIdx := map[string]int{}
	for i, c := range src {
		srcIdx[c.Name] = i
	}
	deps := func(expr string) []int {
		var out []int
		for _, ref := range References(expr) {
			if i, ok := srcIdx[ref]; ok {
				out = append(out, i)
			}
		}
		sort.Ints(out)
		return out
	}
	dropped := map[string]bool{}
	for _, d := range tc.Drop {
		if _, ok := srcIdx[d]; !ok {
			fail(field+".drop", "source table %s has no column %q", tc.Source, d)
		}
		dropped[d] = true
	}
	for name := range tc.Columns {
		c := tgt.Column(name)
		if c == nil {
			fail(field+".columns."+name, "target table %s has no column %q", tc.Target, name)
		} else if c.Generated {
			fail(field+".columns."+name, "target column %s.%s is generated; it cannot be written", tc.Target, name)
		}
	}
	for _, c := range tgt.Columns {
		if c.Generated {
			continue
		}
		expr, ok := tc.Columns[c.Name]
		if !ok {
			if _, inSrc := srcIdx[c.Name]; !inSrc || dropped[c.Name] {
				continue // left to the target's default
			}
			expr = pgx.Identifier{c.Name}.Sanitize()
		}
		m.Columns = append(m.Columns, TargetColumn{Name: c.Name, Expr: expr, Type: c.Type, Deps: deps(expr)})
	}
	if len(m.Columns) == 0 {
		fail(field, "no target column of %s is mapped from %s", tc.Target, tc.Source)
	}

	m.Key = tc.Key
	if len(m.Key) == 0 {
		m.Key = tgt.PrimaryKey
	}
	if len(m.Key) == 0 {
		fail(field+".key", "target table %s has no primary key: add one, or name a unique NOT NULL key with key: [col, ...]", tc.Target)
	}
	for _, k := range m.Key {
		tcol := tgt.Column(k)
		switch {
		case tcol == nil:
			fail(field+".key", "target table %s has no column %q", tc.Target, k)
		case !tcol.NotNull:
			fail(field+".key", "key column %s.%s is nullable; make it NOT NULL so rows can be matched", tc.Target, k)
		case m.column(k) == nil:
			fail(field+".key", "key column %s.%s is not mapped from any source column; add it under columns:", tc.Target, k)
		default:
			m.keyDeps = append(m.keyDeps, m.column(k).Deps...)
		}
	}
	if len(m.Key) > 0 && len(tc.Key) > 0 && !tgt.HasUniqueKey(m.Key) {
		fail(field+".key", "target table %s has no unique index on (%s); create one so changes can be upserted", tc.Target, strings.Join(m.Key, ", "))
	}
	slices.Sort(m.keyDeps)
	m.keyDeps = slices.Compact(m.keyDeps)

	// DELETE and key-changing UPDATE only carry the replica identity; the
	// target key must be computable from it.
	if !m.fullIdent {
		if replicaIdentity == 'n' {
			fail(field+".source", "source table %s has REPLICA IDENTITY NOTHING: updates and deletes cannot be replicated; run ALTER TABLE %s REPLICA IDENTITY DEFAULT (with a primary key) or FULL", tc.Source, tc.Source)
		}
		for _, d := range m.keyDeps {
			if !src[d].Identity {
				fail(field+".key", "target key depends on source column %q, which is not in the replica identity of %s: deletes could not find their row; run ALTER TABLE %s REPLICA IDENTITY FULL, or key on the source primary key", src[d].Name, tc.Source, tc.Source)
			}
		}
	}
	// An UPDATE that leaves a TOASTed value untouched does not send it. A
	// target column that depends on it alone keeps its value; one that mixes
	// it with other columns cannot be recomputed without it.
	if !m.fullIdent {
		for _, c := range m.Columns {
			if mixesToast(src, c.Deps) {
				fail(field+".columns."+c.Name, "expression mixes a large (TOAST-able) source column with others; an UPDATE that leaves the large value untouched does not send it, so the result cannot be recomputed: run ALTER TABLE %s REPLICA IDENTITY FULL", tc.Source)
			}
		}
	}
	if m.Filter != "" {
		m.filterDeps = deps(m.Filter)
		if !m.fullIdent {
			toastAny := false
			for _, d := range m.filterDeps {
				toastAny = toastAny || src[d].Toastable
			}
			// A row entering the filter must be inserted whole, so every
			// large column it carries must be known.
			mappedToast := false
			for _, c := range m.Columns {
				for _, d := range c.Deps {
					mappedToast = mappedToast || src[d].Toastable
				}
			}
			if toastAny || mappedToast {
				fail(field+".filter", "a filtered table with large (TOAST-able) columns needs the whole row on UPDATE (a row entering the filter is inserted in full): run ALTER TABLE %s REPLICA IDENTITY FULL", tc.Source)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	m.upsertSQL = m.renderUpsert()
	m.deleteSQL = m.renderDelete()
	return m, nil
}

func mixesToast(src []SourceColumn, deps []int) bool {
	toast := false
	for _, d := range deps {
		toast = toast || src[d].Toastable
	}
	return toast && len(deps) > 1
}

func (m *Mapping) column(name string) *TargetColumn {
	for i := range m.Columns {
		if m.Columns[i].Name == name {
			return &m.Columns[i]
		}
	}
	return nil
}

func quote(name string) string { return pgx.Identifier{name}.Sanitize() }

// sourceCTE binds every source column as $n cast to its bind type.
func (m *Mapping) sourceCTE() string { return m.tupleCTE("s", 0) }

// tupleCTE binds a tuple as CTE alias, its parameters numbered from
// offset+1.
func (m *Mapping) tupleCTE(alias string, offset int) string {
	var b strings.Builder
	b.WriteString(alias + " AS (SELECT ")
	for i, c := range m.Source {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "$%d::%s AS %s", offset+i+1, c.BindType, quote(c.Name))
	}
	b.WriteString(")")
	return b.String()
}

func (m *Mapping) keyMatch(alias string) string {
	parts := make([]string, len(m.Key))
	for i, k := range m.Key {
		parts[i] = fmt.Sprintf("t.%s = %s.%s", quote(k), alias, quote(k))
	}
	return strings.Join(parts, " AND ")
}

func (m *Mapping) keyExprs() string {
	parts := make([]string, len(m.Key))
	for i, k := range m.Key {
		c := m.column(k)
		parts[i] = fmt.Sprintf("(%s)::%s AS %s", c.Expr, c.Type, quote(k))
	}
	return strings.Join(parts, ", ")
}

// notPassing is the complement of the filter with NULL counting as failing,
// as WHERE treats it.
func (m *Mapping) notPassing() string {
	return fmt.Sprintf("NOT COALESCE((%s), false)", m.Filter)
}

// filterDelete is a CTE that removes the row when the new image fails the
// filter, so a row leaving the filter on UPDATE leaves the target.
func (m *Mapping) filterDelete() string {
	return fmt.Sprintf(", fk AS (SELECT %s FROM s WHERE %s), fd AS (DELETE FROM %s t USING fk WHERE %s)",
		m.keyExprs(), m.notPassing(), m.Target.QualifiedName(), m.keyMatch("fk"))
}

func (m *Mapping) renderUpsert() string {
	var b strings.Builder
	b.WriteString("WITH ")
	b.WriteString(m.sourceCTE())
	if m.Filter != "" {
		b.WriteString(m.filterDelete())
	}
	names := make([]string, len(m.Columns))
	exprs := make([]string, len(m.Columns))
	var sets []string
	for i, c := range m.Columns {
		names[i] = quote(c.Name)
		exprs[i] = fmt.Sprintf("(%s)::%s", c.Expr, c.Type)
		if !slices.Contains(m.Key, c.Name) {
			sets = append(sets, fmt.Sprintf("%s = EXCLUDED.%s", quote(c.Name), quote(c.Name)))
		}
	}
	fmt.Fprintf(&b, " INSERT INTO %s AS t (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM s",
		m.Target.QualifiedName(), strings.Join(names, ", "), strings.Join(exprs, ", "))
	if m.Filter != "" {
		fmt.Fprintf(&b, " WHERE (%s)", m.Filter)
	}
	keys := make([]string, len(m.Key))
	for i, k := range m.Key {
		keys[i] = quote(k)
	}
	fmt.Fprintf(&b, " ON CONFLICT (%s) DO ", strings.Join(keys, ", "))
	if len(sets) == 0 {
		b.WriteString("NOTHING")
	} else {
		b.WriteString("UPDATE SET ")
		b.WriteString(strings.Join(sets, ", "))
	}
	return b.String()
}

func (m *Mapping) renderDelete() string {
	return fmt.Sprintf("WITH %s, k AS (SELECT %s FROM s) DELETE FROM %s t USING k WHERE %s",
		m.sourceCTE(), m.keyExprs(), m.Target.QualifiedName(), m.keyMatch("k"))
}

// renderPartial is the UPDATE for a new tuple with unchanged TOAST values:
// target columns that depend on an unchanged column are left as they are.
// Compile guarantees such columns depend on nothing else, so their value
// cannot have changed. When the key changed too, the row is found by its
// old key (parameters after the new tuple's) and its key rewritten in
// place: deleting it and inserting the new image would lose the untouched
// values.
func (m *Mapping) renderPartial(unchanged []bool, keyChanged bool) string {
	dependsOnUnchanged := func(deps []int) bool {
		for _, d := range deps {
			if unchanged[d] {
				return true
			}
		}
		return false
	}
	var sets, cols []string
	for _, c := range m.Columns {
		if dependsOnUnchanged(c.Deps) {
			continue
		}
		if slices.Contains(m.Key, c.Name) {
			// v carries the new key already (keyExprs).
			if keyChanged {
				sets = append(sets, fmt.Sprintf("%s = v.%s", quote(c.Name), quote(c.Name)))
			}
			continue
		}
		cols = append(cols, fmt.Sprintf("(%s)::%s AS %s", c.Expr, c.Type, quote(c.Name)))
		sets = append(sets, fmt.Sprintf("%s = v.%s", quote(c.Name), quote(c.Name)))
	}
	var b strings.Builder
	b.WriteString("WITH ")
	b.WriteString(m.sourceCTE())
	match := "v"
	if keyChanged {
		fmt.Fprintf(&b, ", %s, ok AS (SELECT %s FROM o)", m.tupleCTE("o", len(m.Source)), m.keyExprs())
		match = "ok"
	}
	filtered := m.Filter != "" && !dependsOnUnchanged(m.filterDeps)
	if filtered {
		b.WriteString(m.filterDelete())
	}
	if len(sets) == 0 {
		// Nothing computable changed; the statement still runs the filter
		// delete, or is a no-op.
		fmt.Fprintf(&b, " SELECT 1 FROM s WHERE false")
		return b.String()
	}
	fmt.Fprintf(&b, ", v AS (SELECT %s FROM s", strings.Join(append([]string{m.keyExprs()}, cols...), ", "))
	if filtered {
		fmt.Fprintf(&b, " WHERE (%s)", m.Filter)
	}
	from := "v"
	if keyChanged {
		from = "v, ok"
	}
	fmt.Fprintf(&b, ") UPDATE %s t SET %s FROM %s WHERE %s", m.Target.QualifiedName(), strings.Join(sets, ", "), from, m.keyMatch(match))
	return b.String()
}

// Stmt is one statement for the sink: SQL plus text-format parameters (nil
// is NULL).
type Stmt struct {
	SQL    string
	Params [][]byte
	// NeedRow marks an UPDATE that keeps unchanged TOAST values in place:
	// it cannot create its row, so matching none must be reported.
	NeedRow bool
}

// Statements renders the statements that apply one row change. It appends
// to dst to avoid an allocation per change.
func (m *Mapping) Statements(dst []Stmt, c *change.Change) ([]Stmt, error) {
	switch c.Op {
	case change.Insert:
		p, unchanged, err := m.params(c.New, nil)
		if err != nil {
			return dst, err
		}
		if unchanged != nil {
			return dst, fmt.Errorf("insert into %s carried an unchanged TOAST value", m.SourceName)
		}
		return append(dst, Stmt{SQL: m.upsertSQL, Params: p}), nil
	case change.Update:
		p, unchanged, err := m.params(c.New, c.Old)
		if err != nil {
			return dst, err
		}
		keyChanged := c.Old != nil && m.keyChanged(c.Old, c.New)
		if unchanged != nil {
			if keyChanged {
				old, _, err := m.params(c.Old, nil)
				if err != nil {
					return dst, err
				}
				p = append(p, old...)
			}
			return append(dst, Stmt{SQL: m.partialSQL(unchanged, keyChanged), Params: p, NeedRow: true}), nil
		}
		if keyChanged {
			old, _, err := m.params(c.Old, nil)
			if err != nil {
				return dst, err
			}
			dst = append(dst, Stmt{SQL: m.deleteSQL, Params: old})
		}
		return append(dst, Stmt{SQL: m.upsertSQL, Params: p}), nil
	case change.Delete:
		if c.Old == nil {
			return dst, fmt.Errorf("delete from %s carried no old key: check its replica identity", m.SourceName)
		}
		p, _, err := m.params(c.Old, nil)
		if err != nil {
			return dst, err
		}
		return append(dst, Stmt{SQL: m.deleteSQL, Params: p}), nil
	}
	return dst, fmt.Errorf("unexpected change %s on %s", c.Op, m.SourceName)
}

// params turns a tuple into parameters. Unchanged TOAST values are filled
// from the old row when the server sent it whole (REPLICA IDENTITY FULL);
// otherwise they are reported in the returned mask.
func (m *Mapping) params(tuple, old []change.Value) ([][]byte, []bool, error) {
	if len(tuple) != len(m.Source) {
		return nil, nil, fmt.Errorf("%s: row has %d columns, mapping expects %d (relation changed without a Relation message?)", m.SourceName, len(tuple), len(m.Source))
	}
	p := make([][]byte, len(tuple))
	var unchanged []bool
	for i, v := range tuple {
		switch v.Kind {
		case change.Text:
			p[i] = v.Data
		case change.Unchanged:
			if old != nil && old[i].Kind == change.Text {
				p[i] = old[i].Data
				continue
			}
			if unchanged == nil {
				unchanged = make([]bool, len(tuple))
			}
			unchanged[i] = true
		}
	}
	return p, unchanged, nil
}

func (m *Mapping) keyChanged(old, new []change.Value) bool {
	for _, d := range m.keyDeps {
		o, n := old[d], new[d]
		if n.Kind == change.Unchanged || o.Kind == change.Unchanged {
			continue
		}
		if o.Kind != n.Kind || string(o.Data) != string(n.Data) {
			return true
		}
	}
	return false
}

func (m *Mapping) partialSQL(unchanged []bool, keyChanged bool) string {
	var key strings.Builder
	if keyChanged {
		key.WriteByte('k')
	}
	for _, u := range unchanged {
		if u {
			key.WriteByte('1')
		} else {
			key.WriteByte('0')
		}
	}
	if s, ok := m.partial[key.String()]; ok {
		return s
	}
	s := m.renderPartial(unchanged, keyChanged)
	m.partial[key.String()] = s
	return s
}

// FilterSQL is the filter predicate, or "" when none.
func (m *Mapping) FilterSQL() string { return m.Filter }

// Check type-checks every statement of the mapping by preparing it on the
// target: a misspelt column, an unknown function or a type mismatch fails
// here, at startup, with PostgreSQL's own message. When a statement fails,
// each column expression and the filter are checked alone, so the error
// names the field to fix and quotes its expression.
func (m *Mapping) Check(ctx context.Context, conn *pgx.Conn, field string) error {
	stmts := []struct{ what, sql string }{
		{"columns", m.upsertSQL},
		{"key", m.deleteSQL},
	}
	for _, s := range stmts {
		if _, err := conn.Prepare(ctx, "", s.sql); err != nil {
			// Inside a transaction (a mapping recompiled mid-stream) the
			// failure aborted it, and so would fail every later check.
			if conn.PgConn().TxStatus() == 'I' {
				if culprits := m.culprits(ctx, conn, field); culprits != nil {
					return culprits
				}
			}
			return &Error{Field: field + "." + s.what, Msg: fmt.Sprintf("mapping %s -> %s does not type-check on the target: %v", m.SourceName, m.TargetName, pgErrText(err))}
		}
	}
	return nil
}

// culprits prepares each column expression and the filter on its own over
// the bound source row, and reports those that fail (nil when none does:
// the whole statement failed for another reason).
func (m *Mapping) culprits(ctx context.Context, conn *pgx.Conn, field string) error {
	var errs []error
	for _, c := range m.Columns {
		sql := fmt.Sprintf("WITH %s SELECT (%s)::%s FROM s", m.sourceCTE(), c.Expr, c.Type)
		if _, err := conn.Prepare(ctx, "", sql); err != nil {
			errs = append(errs, &Error{Field: field + ".columns." + c.Name,
				Msg: fmt.Sprintf("expression %q does not type-check on the target (as %s): %v", c.Expr, c.Type, pgErrText(err))})
		}
	}
	if m.Filter != "" {
		sql := fmt.Sprintf("WITH %s SELECT 1 FROM s WHERE (%s)", m.sourceCTE(), m.Filter)
		if _, err := conn.Prepare(ctx, "", sql); err != nil {
			errs = append(errs, &Error{Field: field + ".filter",
				Msg: fmt.Sprintf("expression %q does not type-check on the target as a condition: %v", m.Filter, pgErrText(err))})
		}
	}
	return errors.Join(errs...)
}

func pgErrText(err error) string {
	return strings.TrimPrefix(err.Error(), "ERROR: ")
}

// OpColumn is the staging table's column that says what a staged row is
// for: 'u' (upsert its image) or 'd' (delete its key).
const OpColumn = "tandem_op"

// StageDDL creates a session-local staging table shaped like the source row
// (bind types) plus OpColumn. Backfill chunks and grouped stream changes
// are COPYed into it and moved into the target set-based.
func (m *Mapping) StageDDL(stage string) string {
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

// StagedUpsertSQL upserts every staged 'u' row through the same expressions,
// filter (a row failing it is deleted) and conflict rule as the row
// statement, in one set-based statement. Staged keys must be unique.
func (m *Mapping) StagedUpsertSQL(stage string) string {
	return m.replaceSourceCTE(m.upsertSQL, m.stagedCTE(stage, 'u'))
}

// StagedDeleteSQL deletes the key of every staged 'd' row.
func (m *Mapping) StagedDeleteSQL(stage string) string {
	return m.replaceSourceCTE(m.deleteSQL, m.stagedCTE(stage, 'd'))
}

// RowKey identifies a source row by the columns the target key is computed
// from, in their text form: two changes with the same RowKey hit the same
// target row.
func (m *Mapping) RowKey(tuple []change.Value) (string, bool) {
	return change.Key(tuple, m.keyDeps)
}

// Groupable reports whether this mapping's changes may be compacted per
// key and applied set-based within a target transaction: the target key
// must be its only unique constraint (so no other row can conflict in
// between), and the caller must know no foreign key ties it to another
// mapped table (so order across tables does not matter).
func (m *Mapping) Groupable() bool {
	return len(m.Target.UniqueKeys) == 1 && m.Target.HasUniqueKey(m.Key) && len(m.keyDeps) > 0
}

// SourceIndexes returns the positions of the named source columns.
func (m *Mapping) SourceIndexes(names []string) ([]int, error) {
	out := make([]int, len(names))
	for i, n := range names {
		out[i] = -1
		for j, c := range m.Source {
			if c.Name == n {
				out[i] = j
			}
		}
		if out[i] < 0 {
			return nil, fmt.Errorf("%s has no column %q", m.SourceName, n)
		}
	}
	return out, nil
}

// DirectCopy describes a mapping whose target rows are the source rows
// themselves: no filter, and every mapped target column a bare copy of a
// source column of the same type. Such rows can be COPYed straight into
// the target, where the type's input function reads the source's output
// exactly as the cast of the row path would. Columns are the target
// columns in COPY order, Source their source positions, and Key the
// positions of the target key in Columns.
type DirectCopy struct {
	Columns  []string
	Source   []int
	KeyTypes []string
	KeySrc   []int
	// Ranged is set when the first key column's type sorts the same on
	// every server (no collation), so a chunk read in key order spans
	// exactly [first row, last row] on the target too.
	Ranged bool
	// Binary is set when every source column is copied to exactly one
	// target column and has a built-in type with a binary send/receive
	// pair. Built-in types have the same OID on every server, so their
	// binary form (which for arrays names the element type's OID) reads
	// back unchanged on the target; a source row read in binary is then a
	// COPY row as it stands, for the target (columns BySource) and for
	// the staging table alike, and is never converted to text and parsed
	// again on either side.
	Binary bool
	// BySource are the target columns in source column order; set with
	// Binary.
	BySource []string
}

// noBinaryIO are the built-in types (and their arrays) without binary
// send/receive functions.
var noBinaryIO = map[uint32]bool{1033: true, 1034: true, 3642: true, 3644: true} // aclitem, gtsvector

// collationFree are built-in types whose order does not depend on a
// collation or a server setting.
var collationFree = map[uint32]bool{
	20: true, 21: true, 23: true, 26: true, 1700: true, // int8, int2, int4, oid, numeric
	1082: true, 1114: true, 1184: true, 2950: true, // date, timestamp, timestamptz, uuid
}

// Direct returns the mapping's DirectCopy, or false when rows need the
// expression path.
func (m *Mapping) Direct() (DirectCopy, bool) {
	var d DirectCopy
	if m.Filter != "" {
		return d, false
	}
	for _, c := range m.Columns {
		if len(c.Deps) != 1 || c.Expr != quote(m.Source[c.Deps[0]].Name) {
			return d, false
		}
		src := m.Source[c.Deps[0]]
		tc := m.Target.Column(c.Name)
		same := src.TypeOID == tc.TypeOID && src.TypeOID < firstUserOID ||
			src.TypeOID >= firstUserOID && src.BindType == tc.Type
		if !same {
			return d, false
		}
		d.Columns = append(d.Columns, c.Name)
		d.Source = append(d.Source, c.Deps[0])
	}
	for _, k := range m.Key {
		c := m.column(k)
		t := m.Target.Column(k).Type
		if strings.HasSuffix(t, "]") {
			return d, false // an array key cannot be probed as an array of keys
		}
		d.KeyTypes = append(d.KeyTypes, t)
		d.KeySrc = append(d.KeySrc, c.Deps[0])
	}
	d.Ranged = collationFree[m.Target.Column(m.Key[0]).TypeOID]
	d.BySource = make([]string, len(m.Source))
	for i, src := range d.Source {
		if d.BySource[src] != "" {
			d.BySource = nil
			return d, true // a source column copied twice
		}
		d.BySource[src] = d.Columns[i]
	}
	for i, c := range m.Source {
		if d.BySource[i] == "" || c.TypeOID >= firstUserOID || noBinaryIO[c.TypeOID] {
			d.BySource = nil
			return d, true
		}
	}
	d.Binary = true
	return d, true
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

// StageCopySQL is the COPY that loads staged rows into a staging table:
// text rows carry every source column and then the op, binary rows (see
// DirectCopy.Binary) only the source columns, the op defaulting to 'u'.
func (m *Mapping) StageCopySQL(stage string, binary bool) string {
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
