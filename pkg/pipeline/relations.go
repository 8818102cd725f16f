package pipeline

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

// Skip reasons, the label values of tandem_changes_skipped_total. Every
// change tandem receives and does not apply is counted under one of them.
const (
	// skipNotConfigured: a table in the publication that no tables[] entry
	// maps and that is no partition of a mapped table. The publication may
	// be shared (FOR ALL TABLES, another migration's tables); the config is
	// the user's statement of what this migration moves, so such a change
	// is outside it by definition. A configured table that was renamed is
	// told apart by its OID and stops the daemon instead.
	skipNotConfigured = "not_configured"
	// skipAlreadyApplied: a transaction at or before the checkpoint, sent
	// again because the slot is confirmed only after the target commit.
	skipAlreadyApplied = "already_applied"
	// skipEcho: a transaction the other direction wrote (it carries that
	// direction's replication origin); applying it would send a change
	// back where it came from, possibly over a newer one.
	skipEcho = "echo"
)

func (a *applier) skipped(table, reason string) {
	a.m.Skipped.WithLabelValues(table, reason).Inc()
}

// onRelation binds a relation OID to its mappings. When the source table's
// shape differs from the one planned at startup (a column added or changed
// on the old database), the mapping is compiled again from the Relation
// message and type-checked on the target; if it no longer applies, the
// daemon stops with the reason rather than write wrong rows.
func (a *applier) onRelation(ctx context.Context, rel *change.Relation) error {
	// Catalog work on both databases, bounded like every apply call.
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Apply.StatementTimeout)
	defer cancel()
	tables := a.bySource[rel.QualifiedName()]
	if len(tables) == 0 {
		var err error
		if tables, err = a.adopt(ctx, rel); err != nil {
			return err
		}
		if len(tables) == 0 {
			delete(a.byOID, rel.OID)
			return nil
		}
	}
	var maps []*transform.Mapping
	for _, t := range tables {
		if sameShape(t.Mapping.Source, rel) {
			maps = append(maps, t.Mapping)
			continue
		}
		m, err := a.recompile(ctx, t, rel)
		if err != nil {
			return &FatalError{Err: fmt.Errorf("source table %s changed shape and the mapping to %s no longer applies: %w; adjust the config (or the new schema) and restart", rel.QualifiedName(), t.Config.Target, err)}
		}
		a.log.Info("source table changed shape; mapping recompiled", "table", rel.QualifiedName(), "columns", len(rel.Columns))
		if g := a.groups[t.Mapping]; g != nil {
			delete(a.groups, t.Mapping)
			a.addGroup(m, g.Stage)
		}
		t.Mapping = m
		maps = append(maps, m)
	}
	a.byOID[rel.OID] = maps
	return nil
}

// adopt finds the configured tables of a relation the config does not name:
// a partition of a configured partitioned table, published under its own
// name by a publication without publish_via_partition_root (tandem's own
// publications publish via the root, but a user's may not, and a partition
// attached later joins it by itself). It returns nil for a relation outside
// the migration, and stops the daemon for a configured table that was
// renamed, whose changes would otherwise be skipped.
func (a *applier) adopt(ctx context.Context, rel *change.Relation) ([]*Table, error) {
	if name, ok := a.configured[rel.OID]; ok {
		return nil, &FatalError{Err: fmt.Errorf("source table %s now arrives as %s: it was renamed on the old database; set tables[].source to the new name and restart", name, rel.QualifiedName())}
	}
	var schema, name string
	err := a.src.QueryRow(ctx, `SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.oid = pg_partition_root($1::oid) AND c.oid <> $1::oid`, rel.OID).Scan(&schema, &name)
	switch {
	case err == nil:
		root := schema + "." + name
		if tables := a.bySource[root]; len(tables) > 0 {
			// PostgreSQL 15 sends a partition's Relation message even when
			// its changes come under the root, so this is only worth
			// saying once a change arrives under the partition's name.
			a.log.Debug("partition mapped to its partitioned table", "partition", rel.QualifiedName(), "table", root)
			rel.Leaf = rel.QualifiedName()
			rel.Schema, rel.Name = schema, name
			return tables, nil
		}
	case !errors.Is(err, pgx.ErrNoRows):
		return nil, fmt.Errorf("find the partitioned table of source relation %s: %w", rel.QualifiedName(), err)
	}
	a.log.Warn("the publication sends changes of a table no tables[] entry maps; they are skipped and counted in tandem_changes_skipped_total{reason=\"not_configured\"}",
		"table", rel.QualifiedName(), "publication", a.cfg.Source.Publication)
	return nil, nil
}

func sameShape(cols []transform.SourceColumn, rel *change.Relation) bool {
	if len(cols) != len(rel.Columns) {
		return false
	}
	for i, c := range rel.Columns {
		if cols[i].Name != c.Name || cols[i].TypeOID != c.TypeOID {
			return false
		}
	}
	return true
}

func (a *applier) recompile(ctx context.Context, t *Table, rel *change.Relation) (*transform.Mapping, error) {
	// Changes held so far were built for the old shape; send them before
	// the target connection is used for catalog work.
	if err := a.flushGroups(ctx); err != nil {
		return nil, err
	}
	if err := a.sink.Flush(ctx); err != nil {
		return nil, err
	}
	oids := make([]uint32, len(rel.Columns))
	for i, c := range rel.Columns {
		oids[i] = c.TypeOID
	}
	types, err := catalog.LookupTypes(ctx, a.src, oids)
	if err != nil {
		return nil, err
	}
	cols, err := transform.SourceFromRelation(rel, types)
	if err != nil {
		return nil, err
	}
	tgt := a.sink.Conn()
	ts, tn, _ := config.SplitQualified(t.Config.Target)
	tt, err := catalog.Load(ctx, tgt, ts, tn)
	if err != nil {
		return nil, err
	}
	m, err := transform.Plan(ctx, t.Field, t.Config, cols, rel.ReplicaIdentity, tt, tgt)
	if err != nil {
		return nil, err
	}
	// Preparing inside the open transaction is safe: if it fails the
	// daemon stops and the transaction is rolled back anyway.
	if err := m.Check(ctx, tgt, t.Field); err != nil {
		return nil, err
	}
	return m, nil
}
