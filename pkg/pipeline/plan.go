package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/backfill"
	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

// Table is one configured mapping, planned against both databases.
type Table struct {
	Field   string // config path, e.g. tables[0]
	Config  config.TableConfig
	Source  *catalog.Table
	Mapping *transform.Mapping
}

// Plan describes and compiles every configured table against both
// databases, returning every problem found (not just the first), each
// naming its config field and fix.
func Plan(ctx context.Context, cfg *config.Config, src, tgt *pgx.Conn) ([]*Table, error) {
	var out []*Table
	var errs []error
	for i, tc := range cfg.Tables {
		field := fmt.Sprintf("tables[%d]", i)
		t, err := planTable(ctx, field, tc, src, tgt, cfg.Backfill.IsEnabled())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, t)
	}
	return out, errors.Join(errs...)
}

func planTable(ctx context.Context, field string, tc config.TableConfig, src, tgt *pgx.Conn, backfillOn bool) (*Table, error) {
	st, tt, err := transform.LoadTables(ctx, field, tc, src, tgt)
	if err != nil {
		return nil, err
	}
	switch {
	case st.ReplicaIdentity == 'n':
		return nil, &transform.Error{Field: field + ".source", Msg: fmt.Sprintf("table %s has REPLICA IDENTITY NOTHING, so its updates and deletes are not replicated: ALTER TABLE %s REPLICA IDENTITY FULL (or DEFAULT with a primary key)", tc.Source, tc.Source)}
	case len(st.IdentityColumns()) == 0:
		return nil, &transform.Error{Field: field + ".source", Msg: fmt.Sprintf("table %s has no primary key or replica identity, so its updates and deletes cannot be replicated: ALTER TABLE %s ADD PRIMARY KEY (...), or ALTER TABLE %s REPLICA IDENTITY FULL", tc.Source, tc.Source, tc.Source)}
	}
	if err := errors.Join(checkSourceGenerated(field, tc, st, tt), checkPartitionIdentity(ctx, src, field, st)); err != nil {
		return nil, err
	}
	m, err := transform.Plan(ctx, field, tc, transform.SourceFromCatalog(st), st.ReplicaIdentity, tt, tgt)
	if err != nil {
		return nil, err
	}
	if err := m.Check(ctx, tgt, field); err != nil {
		return nil, err
	}
	if backfillOn {
		if _, err := backfill.NewJob(field, st, m, 0); err != nil {
			return nil, err
		}
	}
	return &Table{Field: field, Config: tc, Source: st, Mapping: m}, nil
}

// Groupable picks the mappings whose changes may be compacted and applied
// set-based within a target transaction: the target key is the table's only
// unique constraint, and no foreign key links it to itself or to another
// mapped target (order across such tables would matter).
func Groupable(ctx context.Context, tgt *pgx.Conn, tables []*Table) (map[*transform.Mapping]bool, error) {
	oids := make([]uint32, len(tables))
	for i, t := range tables {
		oids[i] = t.Mapping.Target.OID
	}
	rows, err := tgt.Query(ctx, `SELECT conrelid, confrelid FROM pg_constraint
		WHERE contype = 'f' AND conrelid = ANY($1) AND confrelid = ANY($1)`, oids)
	if err != nil {
		return nil, fmt.Errorf("foreign keys among target tables: %w", err)
	}
	linked := map[uint32]bool{}
	for rows.Next() {
		var a, b uint32
		if err := rows.Scan(&a, &b); err != nil {
			rows.Close()
			return nil, fmt.Errorf("foreign keys among target tables: %w", err)
		}
		linked[a], linked[b] = true, true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("foreign keys among target tables: %w", err)
	}
	out := map[*transform.Mapping]bool{}
	for _, t := range tables {
		out[t.Mapping] = t.Mapping.Groupable() && !linked[t.Mapping.Target.OID]
	}
	return out, nil
}

// checkSourceGenerated refuses a mapping that needs a generated source
// column: PostgreSQL does not send generated columns in the stream (before
// version 18), so a new column fed from one would be right after the
// backfill and stale after the first UPDATE. The fix is to compute it on
// the new side, from the columns it is generated from.
func checkSourceGenerated(field string, tc config.TableConfig, st, tt *catalog.Table) error {
	var errs []error
	for _, c := range st.Columns {
		if !c.Generated {
			continue
		}
		for _, col := range sortedKeys(tc.Columns) {
			if slices.Contains(transform.References(tc.Columns[col]), c.Name) {
				errs = append(errs, &transform.Error{Field: field + ".columns." + col, Msg: fmt.Sprintf(
					"expression %q uses source column %s, which is generated (%s); PostgreSQL does not send generated columns in the stream, so write the expression over the columns it is computed from",
					tc.Columns[col], c.Name, c.GenExpr)})
			}
		}
		if _, mapped := tc.Columns[c.Name]; mapped {
			continue
		}
		if tcol := tt.Column(c.Name); tcol != nil && !tcol.Generated {
			errs = append(errs, &transform.Error{Field: field + ".columns." + c.Name, Msg: fmt.Sprintf(
				"source column %s.%s is generated (GENERATED ALWAYS AS (%s) STORED) and PostgreSQL does not send generated columns in the stream, so %s.%s would not follow updates: map it with its expression (columns: {%s: %q}) or make it a generated column on the new table too",
				tc.Source, c.Name, c.GenExpr, tc.Target, c.Name, c.Name, c.GenExpr)})
		}
	}
	return errors.Join(errs...)
}

// checkPartitionIdentity: each partition logs its own replica identity, and
// an UPDATE or DELETE on a partition whose identity differs from what the
// mapping was compiled for would not carry the columns it needs.
func checkPartitionIdentity(ctx context.Context, src *pgx.Conn, field string, st *catalog.Table) error {
	if !st.Partitioned {
		return nil
	}
	rows, err := src.Query(ctx, `SELECT format('%I.%I', n.nspname, c.relname) FROM pg_partition_tree($1::oid) p
		JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE p.isleaf AND c.relreplident <> $2::"char" ORDER BY 1`, st.OID, string(st.ReplicaIdentity))
	if err != nil {
		return fmt.Errorf("%s.source: replica identity of the partitions of %s: %w", field, st, err)
	}
	odd, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("%s.source: replica identity of the partitions of %s: %w", field, st, err)
	}
	if len(odd) == 0 {
		return nil
	}
	return &transform.Error{Field: field + ".source", Msg: fmt.Sprintf(
		"partitions %s of %s have a replica identity other than the table's (%s), so their updates and deletes would not carry the same columns: give each the same one (ALTER TABLE <partition> REPLICA IDENTITY ...)",
		strings.Join(odd, ", "), st, identityName(st.ReplicaIdentity))}
}

func identityName(b byte) string {
	switch b {
	case 'd':
		return "DEFAULT"
	case 'f':
		return "FULL"
	case 'i':
		return "USING INDEX"
	}
	return "NOTHING"
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Describe says, for validate and the start-up log, what tandem found in
// the mapped tables that changes how it applies them.
func Describe(tables []*Table) []string {
	var out []string
	for _, t := range tables {
		if t.Source.Partitioned {
			out = append(out, fmt.Sprintf("%s: source %s is partitioned (%d partitions); the publication sends its changes under %s (publish_via_partition_root), partitions attached later included, and a row moved between partitions stays one row",
				t.Field, t.Source, t.Source.Partitions, t.Source))
		}
		if tt := t.Mapping.Target; tt.Partitioned {
			out = append(out, fmt.Sprintf("%s: target %s is partitioned (%d partitions); rows are routed by the new database", t.Field, tt, tt.Partitions))
		}
		var generated []string
		for _, c := range t.Mapping.Target.Columns {
			if c.Generated {
				generated = append(generated, c.Name)
			}
		}
		if len(generated) > 0 {
			out = append(out, fmt.Sprintf("%s: generated column(s) %s of %s are left to the new database", t.Field, strings.Join(generated, ", "), t.Mapping.Target))
		}
	}
	return out
}
