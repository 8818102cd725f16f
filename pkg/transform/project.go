package transform

import (
	"fmt"
	"slices"
	"strings"
)

// Projection: a mapping evaluated over source rows without writing them,
// to publish what the new schema holds for each change (the JetStream
// sink's "new" shape). The new database evaluates it, as it evaluates
// the statements that write the rows, so a published value is the value
// stored.

// Projection names the columns of a ProjectSQL result.
type Projection struct {
	// Columns are the mapped target columns in result order; Key holds
	// the positions of the target key among them.
	Columns []TargetColumn
	Types   []uint32
	Key     []int
}

// Projection describes m's projected rows.
func (m *Mapping) Projection() Projection {
	p := Projection{Columns: m.Columns}
	for _, c := range m.Columns {
		p.Types = append(p.Types, m.Target.Column(c.Name).TypeOID)
	}
	for _, k := range m.Key {
		p.Key = append(p.Key, slices.IndexFunc(m.Columns, func(c TargetColumn) bool { return c.Name == k }))
	}
	return p
}

// DependsOn reports whether target column i is computed from any of the
// source columns marked in src.
func (p Projection) DependsOn(i int, src []bool) bool {
	for _, d := range p.Columns[i].Deps {
		if d < len(src) && src[d] {
			return true
		}
	}
	return false
}

// ProjectSQL is a query over source rows passed as arrays: $1 bool[]
// (whether the row is whole) and then one text[] per source column (text
// form, NULL for NULL). It returns one row per input row, in input
// order: every mapped target column, as the column's type with its
// modifiers stores it (read it in text format), and whether the row
// passes the filter ("true" or "false").
// For a row that is not whole (an old key) only the key columns are
// computed: the other columns and the filter may depend on values the
// old database did not send.
func (m *Mapping) ProjectSQL() string {
	const full, ord = `"tandem full"`, `"tandem ord"`
	var arrays, names, binds []string
	arrays = append(arrays, "$1::bool[]")
	for i, c := range m.Source {
		arrays = append(arrays, fmt.Sprintf("$%d::text[]", i+2))
		names = append(names, fmt.Sprintf("c%d", i))
		binds = append(binds, fmt.Sprintf("r.c%d::%s AS %s", i, c.BindType, quote(c.Name)))
	}
	var outs []string
	for _, c := range m.Columns {
		// Cast as the column stores it; the caller reads the result in
		// text format, the type's own output (a cast to text would strip
		// a char(n)'s padding).
		v := fmt.Sprintf("((%s)::%s)::%s", c.Expr, c.Type, m.Target.Column(c.Name).FullType)
		if !slices.Contains(m.Key, c.Name) {
			v = fmt.Sprintf("CASE WHEN s.%s THEN %s END", full, v)
		}
		outs = append(outs, v)
	}
	pass := "true"
	if m.Filter != "" {
		pass = fmt.Sprintf("COALESCE((%s), false)", m.Filter)
	}
	// Text like every other output: the verdict reads the same in either
	// result format.
	outs = append(outs, fmt.Sprintf("CASE WHEN s.%s THEN (%s)::text END", full, pass))
	return fmt.Sprintf("SELECT %s FROM (SELECT r.%s, r.%s, %s FROM unnest(%s) WITH ORDINALITY AS r(%s, %s, %s)) s ORDER BY s.%s",
		strings.Join(outs, ", "), full, ord, strings.Join(binds, ", "),
		strings.Join(arrays, ", "), full, strings.Join(names, ", "), ord, ord)
}
