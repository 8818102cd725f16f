package transform

import (
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/change"
)

// Row statements: the SQL text that applies one change, rendered once per
// mapping (and per shape of unchanged TOAST values) and cached.

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
