package verify

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/checkpoint"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

// Table aliases used in every query: expressions from the config name
// source columns unqualified, so the source relation is aliased, not
// wrapped.
const (
	srcAlias = "s"
	tgtAlias = "t"
)

// column is one mapped target column and its canonical text on each side.
type column struct {
	name string
	src  string // SQL over the source row (alias s)
	tgt  string // SQL over the target row (alias t)
}

// keyColumn is one target key column.
type keyColumn struct {
	name string
	col  int // index into plan.cols
	// tgtType is the target column type, to cast canonical key text back
	// when looking rows up by key.
	tgtType string
	// Range mode only: the source column the key copies, its source type,
	// and the type the stream binds it as on the target.
	srcName  string
	srcType  string
	bindType string
	nullable bool
}

// pageColumn is a column a side is paged by in keyset order.
type pageColumn struct {
	name, typ string
}

// plan is everything needed to compare one table mapping.
type plan struct {
	label  string // "public.a -> public.b", for messages
	source string // names as configured
	target string
	srcRel string // quoted source relation
	tgtRel string // quoted target relation
	filter string
	cols   []column
	keys   []keyColumn
	// ranged is true when every target key column is a bare copy of a
	// source column and those columns are unique on the source: chunks can
	// then be cut by source key ranges and the same ranges read on the
	// target. Rows the two servers place in different ranges (collations
	// that disagree on a few strings) are paired across chunks by the
	// reconciler; if they disagree on the range bounds themselves, the
	// ranges would overlap on the target, and the table falls back to keys
	// mode.
	ranged bool
	// srcPage pages the source in fallback mode (its own unique key).
	srcPage []pageColumn
	// convertUTF8 is set when the servers' encodings differ.
	convertUTF8 bool
}

var simpleIdent = regexp.MustCompile(`^[a-z_][a-z0-9_$]*$`)

// buildPlan compiles the mapping exactly as the stream does and derives the
// comparison SQL from it.
// tc comes from a config whose defaults are applied (the target named).
func buildPlan(ctx context.Context, src, tgt *pgx.Conn, field string, tc config.TableConfig) (*plan, error) {
	srcT, tgtT, err := transform.LoadTables(ctx, field, tc, src, tgt)
	if err != nil {
		return nil, err
	}
	m, err := transform.Plan(ctx, field, tc, transform.SourceFromCatalog(srcT), srcT.ReplicaIdentity, tgtT, tgt)
	if err != nil {
		return nil, fmt.Errorf("compile mapping: %w", err)
	}
	p := &plan{
		label:  checkpoint.MappingKey(tc.Source, tc.Target),
		source: tc.Source,
		target: tc.Target,
		srcRel: srcT.QualifiedName(),
		tgtRel: tgtT.QualifiedName(),
		filter: m.FilterSQL(),
	}
	if p.convertUTF8, err = encodingsDiffer(ctx, src, tgt); err != nil {
		return nil, err
	}
	if err := p.addColumns(ctx, tgt, m, tgtT); err != nil {
		return nil, err
	}
	p.addKeys(m, srcT, tgtT)
	// Range mode keeps the page key too: it falls back to keys mode when
	// the servers turn out to order the key differently.
	p.srcPage, err = sourcePageKey(srcT)
	if err != nil && !p.ranged {
		return nil, err
	}
	return p, nil
}

// keysMode is the plan for the fallback: every row's computed key and hash
// is read and matched in memory.
func (p *plan) keysMode() (*plan, error) {
	if p.srcPage == nil {
		return nil, fmt.Errorf("source table %s has no primary key or unique NOT NULL key to page by: cannot verify it by key lookups", p.source)
	}
	kp := *p
	kp.ranged = false
	return &kp, nil
}

func encodingsDiffer(ctx context.Context, src, tgt *pgx.Conn) (bool, error) {
	var encs [2]string
	for i, conn := range []*pgx.Conn{src, tgt} {
		if err := conn.QueryRow(ctx, "SELECT current_setting('server_encoding')").Scan(&encs[i]); err != nil {
			return false, fmt.Errorf("read server encoding: %w", err)
		}
	}
	return encs[0] != encs[1], nil
}

func (p *plan) addColumns(ctx context.Context, tgt *pgx.Conn, m *transform.Mapping, tgtT *catalog.Table) error {
	for _, c := range m.Columns {
		ct, err := resolveCompareType(ctx, tgt, tgtT.Column(c.Name))
		if err != nil {
			return err
		}
		p.cols = append(p.cols, column{
			name: c.Name,
			src:  ct.canonical(ct.sourceValue(c.Expr)),
			tgt:  ct.canonical(ct.targetValue(tgtAlias, c.Name)),
		})
	}
	return nil
}

// addKeys records the key columns and decides between range chunking and
// the fallback. The fallback exists because a computed key (lower(email),
// id + 1000) has no order that both sides share: a source key range does
// not name a target key range.
func (p *plan) addKeys(m *transform.Mapping, srcT, tgtT *catalog.Table) {
	p.ranged = true
	var srcNames []string
	for _, k := range m.Key {
		i := slices.IndexFunc(m.Columns, func(c transform.TargetColumn) bool { return c.Name == k })
		kc := keyColumn{name: k, col: i, tgtType: tgtT.Column(k).Type}
		d, bare := bareSource(m, m.Columns[i])
		if bare {
			sc := srcT.Column(m.Source[d].Name)
			kc.srcName, kc.srcType, kc.bindType, kc.nullable = sc.Name, sc.Type, m.Source[d].BindType, !sc.NotNull
			srcNames = append(srcNames, sc.Name)
		}
		p.ranged = p.ranged && bare
		p.keys = append(p.keys, kc)
	}
	// Duplicate source keys would make keyset pagination skip rows at a
	// chunk boundary; only a unique source key can be paged by.
	p.ranged = p.ranged && srcT.HasUniqueKey(srcNames)
}

// bareSource reports whether a target column is a plain copy of one source
// column, and which.
func bareSource(m *transform.Mapping, c transform.TargetColumn) (int, bool) {
	if len(c.Deps) != 1 {
		return -1, false
	}
	name := m.Source[c.Deps[0]].Name
	e := strings.TrimSpace(c.Expr)
	if e == quote(name) || (e == name && simpleIdent.MatchString(name)) {
		return c.Deps[0], true
	}
	return -1, false
}

// sourcePageKey picks the source's own unique, non-null key to page it by
// in fallback mode.
func sourcePageKey(t *catalog.Table) ([]pageColumn, error) {
	candidates := t.UniqueKeys
	if len(t.PrimaryKey) > 0 {
		candidates = append([][]string{t.PrimaryKey}, candidates...)
	}
	for _, key := range candidates {
		var out []pageColumn
		for _, n := range key {
			if c := t.Column(n); c != nil && c.NotNull {
				out = append(out, pageColumn{name: n, typ: c.Type})
			}
		}
		if len(out) == len(key) {
			return out, nil
		}
	}
	return nil, fmt.Errorf("source table %s has no primary key or unique NOT NULL key to page by, and the target key is computed: cannot verify it", t)
}

// args numbers bind parameters as SQL is rendered.
type args []any

func (a *args) add(v any) string {
	*a = append(*a, v)
	return fmt.Sprintf("$%d", len(*a))
}

func quote(name string) string { return pgx.Identifier{name}.Sanitize() }

// rowHash is a 64-bit hash (int8) of the row's canonical text. ROW(...)::text
// quotes every value that needs it, so NULL (nothing) and the empty string ("") differ and
// no value can run into the next. hashtextextended is the hash behind hash
// partitioning, which PostgreSQL keeps stable across versions, and it costs
// about half of md5; with the C collation it hashes the bytes. The bytes
// are the server encoding's, so when the two servers differ in encoding
// the text is converted to UTF-8 and hashed with md5 instead.
func (p *plan) rowHash(side byte) string {
	parts := make([]string, len(p.cols))
	for i, c := range p.cols {
		parts[i] = c.side(side)
	}
	row := fmt.Sprintf("ROW(%s)::text", strings.Join(parts, ", "))
	if p.convertUTF8 {
		return fmt.Sprintf("('x' || left(md5(convert_to(%s, 'UTF8')), 16))::bit(64)::int8", row)
	}
	return fmt.Sprintf(`hashtextextended(%s COLLATE "C", 0)`, row)
}

// rowHashText is rowHash as text, for the per-row reads.
func (p *plan) rowHashText(side byte) string { return "(" + p.rowHash(side) + ")::text" }

// sumHash aggregates row hashes without sorting: their sum, as numeric so
// it cannot overflow. With unique keys in every row's text, a changed,
// missing or extra row changes the sum but for a 2^-64 chance.
func sumHash(hash string) string {
	return fmt.Sprintf("coalesce(sum(%s), 0)::text", hash)
}

func (c column) side(side byte) string {
	if side == 's' {
		return c.src
	}
	return c.tgt
}

// keyArray renders the canonical key text of a row as text[]; both sides
// render it identically, so it identifies a row across databases.
func (p *plan) keyArray(side byte) string {
	parts := make([]string, len(p.keys))
	for i, k := range p.keys {
		parts[i] = p.cols[k.col].side(side)
	}
	return "ARRAY[" + strings.Join(parts, ", ") + "]"
}

// colArray renders every mapped column's canonical text as text[].
func (p *plan) colArray(side byte) string {
	parts := make([]string, len(p.cols))
	for i, c := range p.cols {
		parts[i] = c.side(side)
	}
	return "ARRAY[" + strings.Join(parts, ", ") + "]::text[]"
}

// srcKeyTuple is the source key columns as a row value, in range mode.
func (p *plan) srcKeyTuple() string {
	parts := make([]string, len(p.keys))
	for i, k := range p.keys {
		parts[i] = srcAlias + "." + quote(k.srcName)
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

func (p *plan) tgtKeyTuple() string {
	parts := make([]string, len(p.keys))
	for i, k := range p.keys {
		parts[i] = tgtAlias + "." + quote(k.name)
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

func (p *plan) srcKeyOrder() string {
	return strings.Trim(p.srcKeyTuple(), "()")
}

// srcBound binds a source cursor (source text of each key column) cast to
// the source types.
func (p *plan) srcBound(a *args, cursor []string) string {
	parts := make([]string, len(p.keys))
	for i, k := range p.keys {
		parts[i] = a.add(cursor[i]) + "::" + k.srcType
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// tgtBound binds a source cursor on the target, converted as the stream
// converts the key: bound as the source type (or text), cast to the target
// type.
func (p *plan) tgtBound(a *args, cursor []string) string {
	parts := make([]string, len(p.keys))
	for i, k := range p.keys {
		parts[i] = fmt.Sprintf("%s::%s::%s", a.add(cursor[i]), k.bindType, k.tgtType)
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// srcWhere is the source predicate every query shares: the mapping's filter
// (NULL counts as false, as in WHERE) and non-NULL keys, whose rows are
// counted apart because the target cannot hold them.
func (p *plan) srcWhere() []string {
	var conds []string
	if p.filter != "" {
		conds = append(conds, "("+p.filter+")")
	}
	if nn := p.srcKeyNotNull(); nn != "" {
		conds = append(conds, nn)
	}
	return conds
}

func (p *plan) srcKeyNotNull() string {
	var parts []string
	for _, k := range p.keys {
		if p.ranged {
			if k.nullable {
				parts = append(parts, srcAlias+"."+quote(k.srcName)+" IS NOT NULL")
			}
			continue
		}
		parts = append(parts, "("+p.cols[k.col].src+") IS NOT NULL")
	}
	return strings.Join(parts, " AND ")
}

// srcKeyNull selects source rows the target can never hold: a NULL in a
// key that is NOT NULL on the target.
func (p *plan) srcKeyNull() string {
	var parts []string
	for _, k := range p.keys {
		if p.ranged {
			if k.nullable {
				parts = append(parts, srcAlias+"."+quote(k.srcName)+" IS NULL")
			}
			continue
		}
		parts = append(parts, "("+p.cols[k.col].src+") IS NULL")
	}
	if len(parts) == 0 {
		return ""
	}
	return strings.Join(parts, " OR ")
}

func where(conds []string) string {
	if len(conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(conds, " AND ")
}

// srcByKeys selects source rows by canonical key text. In range mode the
// key text is cast to the source column types so the source's index is
// used; a computed key can only be matched by computing it for every row.
func (p *plan) srcByKeys(a *args, keys [][]string) string {
	cols, casts := p.unnestKeys(a, keys)
	if p.ranged {
		for i, k := range p.keys {
			casts[i] += "::" + k.srcType
		}
		return fmt.Sprintf("%s IN (SELECT %s FROM unnest(%s) AS u(%s))",
			p.srcKeyTuple(), strings.Join(casts, ", "), strings.Join(cols.params, ", "), strings.Join(cols.names, ", "))
	}
	exprs := make([]string, len(p.keys))
	for i, k := range p.keys {
		exprs[i] = p.cols[k.col].src
	}
	return fmt.Sprintf("(%s) IN (SELECT %s FROM unnest(%s) AS u(%s))",
		strings.Join(exprs, ", "), strings.Join(casts, ", "), strings.Join(cols.params, ", "), strings.Join(cols.names, ", "))
}

func (p *plan) tgtByKeys(a *args, keys [][]string) string {
	cols, casts := p.unnestKeys(a, keys)
	for i, k := range p.keys {
		casts[i] += "::" + k.tgtType
	}
	return fmt.Sprintf("%s IN (SELECT %s FROM unnest(%s) AS u(%s))",
		p.tgtKeyTuple(), strings.Join(casts, ", "), strings.Join(cols.params, ", "), strings.Join(cols.names, ", "))
}

type unnestCols struct{ params, names []string }

// unnestKeys binds one text[] per key column (keys arrive as rows).
func (p *plan) unnestKeys(a *args, keys [][]string) (unnestCols, []string) {
	var u unnestCols
	casts := make([]string, len(p.keys))
	for i := range p.keys {
		col := make([]string, len(keys))
		for j, k := range keys {
			col[j] = k[i]
		}
		name := fmt.Sprintf("k%d", i)
		u.params = append(u.params, a.add(col)+"::text[]")
		u.names = append(u.names, name)
		casts[i] = "u." + name
	}
	return u, casts
}
