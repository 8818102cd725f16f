package transform

import (
	"context"
	"fmt"

	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/change"
)

// SourceFromCatalog describes the source row from the source catalog, as at
// startup before any Relation message has arrived. Generated columns are
// left out: pgoutput does not send them (before PostgreSQL 18), so the
// backfill, verify and the stream all see the same row.
func SourceFromCatalog(t *catalog.Table) []SourceColumn {
	out := make([]SourceColumn, 0, len(t.Columns))
	for _, c := range t.Columns {
		if c.Generated {
			continue
		}
		out = append(out, SourceColumn{Name: c.Name, TypeOID: c.TypeOID, BindType: c.Type, Toastable: c.Toastable, Identity: c.Identity})
	}
	return out
}

// SourceFromRelation describes the source row as a Relation message does.
// types must hold every column's type OID (see catalog.LookupTypes).
func SourceFromRelation(rel *change.Relation, types map[uint32]catalog.TypeInfo) ([]SourceColumn, error) {
	out := make([]SourceColumn, len(rel.Columns))
	for i, c := range rel.Columns {
		ti, ok := types[c.TypeOID]
		if !ok {
			return nil, fmt.Errorf("%s.%s: type OID %d of column %s is unknown on the source", rel.Schema, rel.Name, c.TypeOID, c.Name)
		}
		out[i] = SourceColumn{Name: c.Name, TypeOID: c.TypeOID, BindType: ti.Name, Toastable: ti.Toastable, Identity: c.Key || rel.ReplicaIdentity == 'f'}
	}
	return out, nil
}

// ResolveBindTypes makes every bind type valid on the target: built-in types
// exist everywhere; a user-defined type (enum, domain, composite) is bound
// by name when the target has a type of that name, else as text, so an
// expression can still map its labels.
func ResolveBindTypes(ctx context.Context, tgt catalog.Querier, cols []SourceColumn) error {
	for i := range cols {
		if cols[i].TypeOID < firstUserOID {
			continue
		}
		var known bool
		if err := tgt.QueryRow(ctx, `SELECT to_regtype($1) IS NOT NULL`, cols[i].BindType).Scan(&known); err != nil {
			return fmt.Errorf("resolve type %s on target: %w", cols[i].BindType, err)
		}
		if !known {
			cols[i].BindType = "text"
		}
	}
	return nil
}
