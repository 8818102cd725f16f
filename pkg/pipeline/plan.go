package pipeline

import (
	"context"
	"errors"
	"fmt"

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
	ss, sn, _ := config.SplitQualified(tc.Source)
	ts, tn, _ := config.SplitQualified(tc.Target)
	st, err := catalog.Load(ctx, src, ss, sn)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil, &transform.Error{Field: field + ".source", Msg: fmt.Sprintf("table %s does not exist on the source", tc.Source)}
	}
	if err != nil {
		return nil, fmt.Errorf("%s.source: %w", field, err)
	}
	switch {
	case st.ReplicaIdentity == 'n':
		return nil, &transform.Error{Field: field + ".source", Msg: fmt.Sprintf("table %s has REPLICA IDENTITY NOTHING, so its updates and deletes are not replicated: ALTER TABLE %s REPLICA IDENTITY FULL (or DEFAULT with a primary key)", tc.Source, tc.Source)}
	case len(st.IdentityColumns()) == 0:
		return nil, &transform.Error{Field: field + ".source", Msg: fmt.Sprintf("table %s has no primary key or replica identity, so its updates and deletes cannot be replicated: ALTER TABLE %s ADD PRIMARY KEY (...), or ALTER TABLE %s REPLICA IDENTITY FULL", tc.Source, tc.Source, tc.Source)}
	}
	tt, err := catalog.Load(ctx, tgt, ts, tn)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil, &transform.Error{Field: field + ".target", Msg: fmt.Sprintf("table %s does not exist on the target: create the new schema first", tc.Target)}
	}
	if err != nil {
		return nil, fmt.Errorf("%s.target: %w", field, err)
	}
	cols := transform.SourceFromCatalog(st)
	if err := transform.ResolveBindTypes(ctx, tgt, cols); err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	m, err := transform.Compile(field, tc, cols, st.ReplicaIdentity, tt)
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
