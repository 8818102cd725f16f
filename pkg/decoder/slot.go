package decoder

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/change"
)

// SlotInfo is what the source says about the replication slot.
type SlotInfo struct {
	Exists         bool
	Plugin         string
	Active         bool
	ConfirmedFlush change.LSN
	RestartLSN     change.LSN
	// RetainedBytes is the WAL the slot keeps on the source's disk.
	RetainedBytes int64
}

// LookupSlot reads the slot's state.
func LookupSlot(ctx context.Context, conn *pgx.Conn, slot string) (SlotInfo, error) {
	var si SlotInfo
	var confirmed, restart *change.LSN
	err := conn.QueryRow(ctx, `SELECT plugin, active, confirmed_flush_lsn, restart_lsn,
		COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::int8
		FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&si.Plugin, &si.Active, &confirmed, &restart, &si.RetainedBytes)
	if errors.Is(err, pgx.ErrNoRows) {
		return si, nil
	}
	if err != nil {
		return si, fmt.Errorf("look up slot %s: %w", slot, err)
	}
	si.Exists = true
	if confirmed != nil {
		si.ConfirmedFlush = *confirmed
	}
	if restart != nil {
		si.RestartLSN = *restart
	}
	return si, nil
}

// EnsurePublication creates the publication for tables, or adds the tables
// a config grew since it was created. It never removes tables: another
// migration or a human may rely on them.
//
// A publication tandem creates publishes partitioned tables via their root
// (publish_via_partition_root), so a partitioned table is one relation in
// the stream, a partition attached later is included, and an UPDATE that
// moves a row between partitions stays one UPDATE. An existing one is
// switched to it when tandem may manage it; otherwise the pipeline maps
// each partition to its root as it arrives.
func EnsurePublication(ctx context.Context, conn *pgx.Conn, publication string, tables []string, create bool) error {
	var exists, allTables, viaRoot bool
	err := conn.QueryRow(ctx, `SELECT true, puballtables, pubviaroot FROM pg_publication WHERE pubname = $1`, publication).Scan(&exists, &allTables, &viaRoot)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("look up publication %s: %w", publication, err)
	}
	pub := pgx.Identifier{publication}.Sanitize()
	if !exists {
		if !create {
			return fmt.Errorf("publication %s does not exist on the source: create it (CREATE PUBLICATION %s FOR TABLE %s WITH (publish_via_partition_root = true)) or set source.create_publication: true", publication, publication, strings.Join(tables, ", "))
		}
		_, err := conn.Exec(ctx, fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish_via_partition_root = true)", pub, quoteTables(tables)))
		if err != nil {
			return fmt.Errorf("create publication %s: %w (the source user must own the tables, or a superuser must create the publication)", publication, err)
		}
		return nil
	}
	if !viaRoot && create {
		partitioned, err := anyPartitioned(ctx, conn, tables)
		if err != nil {
			return err
		}
		if partitioned {
			if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER PUBLICATION %s SET (publish_via_partition_root = true)", pub)); err != nil {
				return fmt.Errorf("publication %s: publish partitioned tables via their root: %w", publication, err)
			}
		}
	}
	if allTables {
		return nil
	}
	missing, err := unpublished(ctx, conn, publication, tables)
	if err != nil || len(missing) == 0 {
		return err
	}
	if !create {
		return fmt.Errorf("publication %s lacks %s: ALTER PUBLICATION %s ADD TABLE %s", publication, strings.Join(missing, ", "), publication, strings.Join(missing, ", "))
	}
	_, err = conn.Exec(ctx, fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s", pub, quoteTables(missing)))
	if err != nil {
		return fmt.Errorf("add %s to publication %s: %w", strings.Join(missing, ", "), publication, err)
	}
	return nil
}

// unpublishedSQL lists the configured tables the publication does not
// cover. A table counts as covered when it is listed itself or when one of
// its partitions is: pg_publication_tables names the partitions, not the
// partitioned table, unless the publication publishes via the root.
const unpublishedSQL = `
SELECT t FROM unnest($2::text[]) AS t
WHERE NOT EXISTS (
	SELECT 1 FROM pg_publication_tables pt
	WHERE pt.pubname = $1
	  AND COALESCE(pg_partition_root(format('%I.%I', pt.schemaname, pt.tablename)::regclass),
	               format('%I.%I', pt.schemaname, pt.tablename)::regclass)
	      = to_regclass(format('%I.%I', split_part(t, '.', 1), split_part(t, '.', 2))))
AND NOT EXISTS (
	SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
	WHERE p.pubname = $1
	  AND pr.prrelid = to_regclass(format('%I.%I', split_part(t, '.', 1), split_part(t, '.', 2))))`

func unpublished(ctx context.Context, conn *pgx.Conn, publication string, tables []string) ([]string, error) {
	rows, err := conn.Query(ctx, unpublishedSQL, publication, tables)
	if err != nil {
		return nil, fmt.Errorf("tables of publication %s: %w", publication, err)
	}
	missing, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("tables of publication %s: %w", publication, err)
	}
	return missing, nil
}

func anyPartitioned(ctx context.Context, conn *pgx.Conn, tables []string) (bool, error) {
	var n int
	err := conn.QueryRow(ctx, `SELECT count(*) FROM unnest($1::text[]) AS t
		JOIN pg_class c ON c.oid = to_regclass(format('%I.%I', split_part(t, '.', 1), split_part(t, '.', 2)))
		WHERE c.relkind = 'p'`, tables).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("look for partitioned source tables: %w", err)
	}
	return n > 0, nil
}

func quoteTables(names []string) string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = pgx.Identifier(strings.SplitN(n, ".", 2)).Sanitize()
	}
	return strings.Join(out, ", ")
}

// EnsureSlot creates the logical slot (pgoutput) when it does not exist.
func EnsureSlot(ctx context.Context, conn *pgx.Conn, slot string) (SlotInfo, bool, error) {
	si, err := LookupSlot(ctx, conn, slot)
	if err != nil {
		return si, false, err
	}
	if si.Exists {
		if si.Plugin != "pgoutput" {
			return si, false, fmt.Errorf("slot %s uses plugin %s, not pgoutput: pick another source.slot or drop it", slot, si.Plugin)
		}
		return si, false, nil
	}
	if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
		return si, false, fmt.Errorf("create slot %s: %w", slot, err)
	}
	si, err = LookupSlot(ctx, conn, slot)
	return si, true, err
}

// DropSlot removes the slot so the source stops keeping WAL for it; it
// terminates a walsender still holding it (a daemon that was kill -9ed).
func DropSlot(ctx context.Context, conn *pgx.Conn, slot string) (bool, error) {
	si, err := LookupSlot(ctx, conn, slot)
	if err != nil || !si.Exists {
		return false, err
	}
	if si.Active {
		if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`, slot); err != nil {
			return false, fmt.Errorf("stop the walsender holding slot %s: %w", slot, err)
		}
	}
	// The terminated walsender releases the slot asynchronously.
	var lastErr error
	for i := 0; i < 50; i++ {
		_, lastErr = conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot)
		if lastErr == nil {
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return false, fmt.Errorf("drop slot %s: %w (is tandem run still running? stop it first)", slot, lastErr)
}

// DropPublication removes the publication.
func DropPublication(ctx context.Context, conn *pgx.Conn, publication string) (bool, error) {
	tag, err := conn.Exec(ctx, `SELECT 1 FROM pg_publication WHERE pubname = $1`, publication)
	if err != nil {
		return false, fmt.Errorf("look up publication %s: %w", publication, err)
	}
	if tag.RowsAffected() == 0 {
		return false, nil
	}
	if _, err := conn.Exec(ctx, "DROP PUBLICATION "+pgx.Identifier{publication}.Sanitize()); err != nil {
		return false, fmt.Errorf("drop publication %s: %w", publication, err)
	}
	return true, nil
}
