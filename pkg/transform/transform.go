// Package transform maps source rows onto the target schema. A mapping is
// compiled once per table from the config and both catalogs; it renders the
// SQL the sink runs. Expressions are evaluated by the target database itself
// over the source row bound as parameters, so an expression means exactly
// what it means in SQL, and the source values cross in their text form.
//
// It owns every SQL text of a mapping, as pure functions of the compiled
// Mapping: plan.go is the one way a mapping is built (by the stream, a
// recompile after a shape change, and verify), transform.go compiles,
// rowsql.go renders the per-change statements, bulksql.go the set-based
// and COPY ones, direct.go decides when rows may skip the expressions;
// only plan.go, check.go and source.go talk to a database (loading the
// tables, type-checking, resolving the source row's types).
package transform

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/catalog"
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
