package transform

import (
	"context"
	"errors"
	"fmt"

	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/config"
)

// LoadTables describes a mapping's two tables; a missing one is an Error
// naming its config field. Every planner starts here, so the stream, the
// backfill and verify see the same tables.
func LoadTables(ctx context.Context, field string, tc config.TableConfig, src, tgt catalog.Querier) (st, tt *catalog.Table, err error) {
	if st, err = loadTable(ctx, src, field+".source", tc.Source, "on the source"); err != nil {
		return nil, nil, err
	}
	if tt, err = loadTable(ctx, tgt, field+".target", tc.Target, "on the target: create the new schema first"); err != nil {
		return nil, nil, err
	}
	return st, tt, nil
}

func loadTable(ctx context.Context, q catalog.Querier, field, name, where string) (*catalog.Table, error) {
	schema, table, err := config.SplitQualified(name)
	if err != nil {
		return nil, &Error{Field: field, Msg: err.Error()}
	}
	t, err := catalog.Load(ctx, q, schema, table)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil, &Error{Field: field, Msg: fmt.Sprintf("%v: %s does not exist %s", catalog.ErrNotFound, name, where)}
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return t, nil
}

// Plan compiles tc for a source row shape (from the source catalog at
// start, from a Relation message when the old table changes shape), with
// the source types bound as the target knows them. It is the one way a
// mapping is built; whoever will write with it type-checks it on the
// target too (Mapping.Check).
func Plan(ctx context.Context, field string, tc config.TableConfig, cols []SourceColumn, replicaIdentity byte, tt *catalog.Table, tgt catalog.Querier) (*Mapping, error) {
	if err := ResolveBindTypes(ctx, tgt, cols); err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return Compile(field, tc, cols, replicaIdentity, tt)
}
