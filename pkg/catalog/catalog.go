// Package catalog reads table shapes from a PostgreSQL catalog: columns with
// their types, keys and replica identity. The transform, the preflight checks,
// backfill and verify all plan from the same description.
package catalog

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Querier is the subset of pgx the catalog needs; *pgx.Conn, *pgxpool.Pool
// and pgx.Tx all satisfy it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// ErrNotFound is returned when a table does not exist.
var ErrNotFound = errors.New("table not found")

// Column describes one column of a table.
type Column struct {
	Name    string
	TypeOID uint32
	// Type is the type without modifiers, schema-qualified when needed:
	// format_type(oid, -1), which says bpchar and "bit" where
	// format_type(oid, NULL) says character and bit, i.e. char(1) and bit(1),
	// and a cast to those would truncate.
	Type string
	// FullType carries modifiers, e.g. numeric(10,2), for messages.
	FullType string
	NotNull  bool
	// Toastable columns can arrive as "unchanged TOAST" in an UPDATE.
	Toastable bool
	Generated bool
	// GenExpr is a generated column's expression, for messages.
	GenExpr    string
	HasDefault bool
	// Identity is true when the column is part of the replica identity.
	Identity bool
}

// Table describes one table.
type Table struct {
	Schema, Name string
	OID          uint32
	Columns      []Column
	PrimaryKey   []string
	// ReplicaIdentity is 'd' (default: primary key), 'f' (full), 'i' (index)
	// or 'n' (nothing).
	ReplicaIdentity byte
	// UniqueKeys lists the column sets of every valid, non-partial unique
	// index (the primary key included).
	UniqueKeys [][]string
	// EstimatedRows is pg_class.reltuples (-1 when never analyzed), summed
	// over the partitions of a partitioned table.
	EstimatedRows int64
	// Partitions counts the leaf partitions of a partitioned table (0 for
	// a plain table).
	Partitioned bool
	Partitions  int
}

// QualifiedName is the table's name quoted for SQL.
func (t *Table) QualifiedName() string {
	return pgx.Identifier{t.Schema, t.Name}.Sanitize()
}

// String is schema.table, unquoted, for messages.
func (t *Table) String() string { return t.Schema + "." + t.Name }

// Column returns the named column, or nil.
func (t *Table) Column(name string) *Column {
	for i := range t.Columns {
		if t.Columns[i].Name == name {
			return &t.Columns[i]
		}
	}
	return nil
}

// IdentityColumns lists the columns a DELETE or key-changing UPDATE carries.
func (t *Table) IdentityColumns() []string {
	var out []string
	for _, c := range t.Columns {
		if c.Identity {
			out = append(out, c.Name)
		}
	}
	return out
}

// HasUniqueKey reports whether some unique index covers exactly cols.
func (t *Table) HasUniqueKey(cols []string) bool {
	for _, k := range t.UniqueKeys {
		if sameSet(k, cols) {
			return true
		}
	}
	return false
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := make(map[string]bool, len(a))
	for _, x := range a {
		m[x] = true
	}
	for _, x := range b {
		if !m[x] {
			return false
		}
	}
	return true
}

const tableQuery = `
SELECT c.oid, c.relreplident, c.relkind = 'p',
       (SELECT count(*) FROM pg_partition_tree(c.oid) WHERE isleaf)::int,
       -- reltuples is -1 until the first ANALYZE; the live-tuple counter is kept without one.
       (SELECT COALESCE(sum(COALESCE(NULLIF(l.reltuples, -1)::int8, (SELECT s.n_live_tup FROM pg_stat_user_tables s WHERE s.relid = l.oid), 0)), 0)::int8
        FROM pg_class l WHERE (c.relkind <> 'p' AND l.oid = c.oid) OR l.oid IN (SELECT relid FROM pg_partition_tree(c.oid) WHERE isleaf))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')`

const columnsQuery = `
SELECT a.attname, a.atttypid, format_type(a.atttypid, -1), format_type(a.atttypid, a.atttypmod),
       a.attnotnull, t.typstorage <> 'p', a.attgenerated <> '', a.atthasdef,
       CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) ELSE '' END
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum`

// uniqueQuery lists unique indexes; the replica identity index is flagged.
const uniqueQuery = `
SELECT i.indisprimary, i.indisreplident,
       array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             ORDER BY k.ord)::text[]
FROM pg_index i
WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
  AND NOT (0 = ANY (i.indkey::int2[]))
ORDER BY i.indisprimary DESC, i.indexrelid`

// Load describes schema.name, or returns an error wrapping ErrNotFound.
func Load(ctx context.Context, q Querier, schema, name string) (*Table, error) {
	t := &Table{Schema: schema, Name: name}
	var ident string
	err := q.QueryRow(ctx, tableQuery, schema, name).Scan(&t.OID, &ident, &t.Partitioned, &t.Partitions, &t.EstimatedRows)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%s.%s: %w", schema, name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("describe %s.%s: %w", schema, name, err)
	}
	t.ReplicaIdentity = ident[0]

	rows, err := q.Query(ctx, columnsQuery, t.OID)
	if err != nil {
		return nil, fmt.Errorf("columns of %s.%s: %w", schema, name, err)
	}
	for rows.Next() {
		var c Column
		if err := rows.Scan(&c.Name, &c.TypeOID, &c.Type, &c.FullType, &c.NotNull, &c.Toastable, &c.Generated, &c.HasDefault, &c.GenExpr); err != nil {
			rows.Close()
			return nil, fmt.Errorf("columns of %s.%s: %w", schema, name, err)
		}
		t.Columns = append(t.Columns, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("columns of %s.%s: %w", schema, name, err)
	}

	rows, err = q.Query(ctx, uniqueQuery, t.OID)
	if err != nil {
		return nil, fmt.Errorf("indexes of %s.%s: %w", schema, name, err)
	}
	var identityIndex []string
	for rows.Next() {
		var primary, replident bool
		var cols []string
		if err := rows.Scan(&primary, &replident, &cols); err != nil {
			rows.Close()
			return nil, fmt.Errorf("indexes of %s.%s: %w", schema, name, err)
		}
		if primary {
			t.PrimaryKey = cols
		}
		if replident {
			identityIndex = cols
		}
		t.UniqueKeys = append(t.UniqueKeys, cols)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("indexes of %s.%s: %w", schema, name, err)
	}

	var idcols []string
	switch t.ReplicaIdentity {
	case 'd':
		idcols = t.PrimaryKey
	case 'i':
		idcols = identityIndex
	case 'f':
		for _, c := range t.Columns {
			idcols = append(idcols, c.Name)
		}
	}
	for _, n := range idcols {
		if c := t.Column(n); c != nil {
			c.Identity = true
		}
	}
	return t, nil
}

// TypeInfo describes a type by OID, for columns known only from a pgoutput
// Relation message.
type TypeInfo struct {
	Name      string // format_type(oid, -1): the unconstrained type
	Toastable bool
}

// LookupTypes resolves type OIDs on the database that owns them.
func LookupTypes(ctx context.Context, q Querier, oids []uint32) (map[uint32]TypeInfo, error) {
	rows, err := q.Query(ctx, `SELECT oid, format_type(oid, -1), typstorage <> 'p' FROM pg_type WHERE oid = ANY($1)`, oids)
	if err != nil {
		return nil, fmt.Errorf("look up types: %w", err)
	}
	out := make(map[uint32]TypeInfo, len(oids))
	for rows.Next() {
		var oid uint32
		var ti TypeInfo
		if err := rows.Scan(&oid, &ti.Name, &ti.Toastable); err != nil {
			rows.Close()
			return nil, fmt.Errorf("look up types: %w", err)
		}
		out[oid] = ti
	}
	return out, rows.Err()
}
