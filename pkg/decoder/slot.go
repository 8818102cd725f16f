package decoder

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

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
	// WALStatus is pg_replication_slots.wal_status: reserved, extended,
	// unreserved (past max_slot_wal_keep_size: invalidated at the next
	// checkpoint unless it catches up) or lost.
	WALStatus string
	// SafeWALSize is how much more WAL the source may write before the slot
	// is lost; nil when max_slot_wal_keep_size is -1 (no limit).
	SafeWALSize *int64
	// InvalidationReason is PostgreSQL's reason for a lost slot (17+).
	InvalidationReason string
	// CurrentLSN is the source's current WAL position (its replay position
	// on a standby).
	CurrentLSN change.LSN
}

// Lost reports whether the slot was invalidated and cannot be resumed.
func (si SlotInfo) Lost() bool {
	return si.Exists && (si.WALStatus == "lost" || si.InvalidationReason != "")
}

// LostError explains a lost slot, or returns nil.
func (si SlotInfo) LostError(slot string) error {
	if !si.Lost() {
		return nil
	}
	// Before PostgreSQL 17 a lost wal_status is the only word, and it means
	// WAL was removed.
	reason := "the old database removed WAL it still needed (pg_replication_slots.wal_status is lost: it fell more than max_slot_wal_keep_size behind)"
	switch si.InvalidationReason {
	case "":
	case "wal_removed":
		reason = "invalidated (wal_removed): it needed more WAL than max_slot_wal_keep_size lets the old database keep, and that WAL was removed"
	default:
		reason = "invalidated (" + si.InvalidationReason + ")"
	}
	return &SlotLostError{Slot: slot, Reason: reason}
}

// slotSQL reads the slot, if any, and the source's position in one round
// trip. invalidation_reason only exists from PostgreSQL 17 on, hence
// to_jsonb.
const slotSQL = `SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END,
	s.slot_name IS NOT NULL, COALESCE(s.plugin, ''), COALESCE(s.active, false), s.confirmed_flush_lsn, s.restart_lsn,
	COALESCE(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, s.restart_lsn), 0)::int8,
	COALESCE(s.wal_status, ''), s.safe_wal_size::int8, COALESCE(to_jsonb(s)->>'invalidation_reason', '')
	FROM (SELECT 1) AS one LEFT JOIN pg_replication_slots s ON s.slot_name = $1`

// LookupSlot reads the slot's state.
func LookupSlot(ctx context.Context, conn *pgx.Conn, slot string) (SlotInfo, error) {
	var si SlotInfo
	var cur, confirmed, restart *change.LSN
	err := conn.QueryRow(ctx, slotSQL, slot).Scan(&cur, &si.Exists, &si.Plugin, &si.Active, &confirmed, &restart,
		&si.RetainedBytes, &si.WALStatus, &si.SafeWALSize, &si.InvalidationReason)
	if err != nil {
		return si, fmt.Errorf("look up slot %s: %w", slot, err)
	}
	if cur != nil {
		si.CurrentLSN = *cur
	}
	if confirmed != nil {
		si.ConfirmedFlush = *confirmed
	}
	if restart != nil {
		si.RestartLSN = *restart
	}
	return si, nil
}

// SlotLostError is a slot PostgreSQL invalidated: the WAL tandem still
// needed is gone, and resuming would silently skip changes.
type SlotLostError struct {
	Slot   string
	Reason string // PostgreSQL's words
}

func (e *SlotLostError) Error() string {
	return fmt.Sprintf("replication slot %s is lost: %s. The changes tandem had not applied yet are gone from the old database, so this migration cannot resume; "+
		"start over: `tandem teardown` (drops the slot, the publication and the checkpoint), empty the new tables, then `tandem run` (a new slot and a full backfill). "+
		"To keep it from happening again, raise max_slot_wal_keep_size on the old database, or alert on tandem_slot_retained_wal_bytes and keep tandem running", e.Slot, e.Reason)
}

// slotLost recognises the error START_REPLICATION (or the stream) returns
// for an invalidated slot: SQLSTATE 55000 with "invalidated" in the
// message or its detail, whose wording changed between versions.
func slotLost(slot string, err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "55000" {
		return nil
	}
	if !strings.Contains(pgErr.Message, "invalidated") && !strings.Contains(pgErr.Detail, "invalidated") {
		return nil
	}
	reason := pgErr.Message
	if pgErr.Detail != "" {
		reason += " (" + strings.TrimSuffix(pgErr.Detail, ".") + ")"
	}
	return &SlotLostError{Slot: slot, Reason: reason}
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

// CreateSlot creates the logical slot (pgoutput). PostgreSQL waits for
// the transactions running on the old database to end before the slot is
// usable, which may take as long as the longest of them: the session's
// statement and lock timeouts are lifted for this one call.
func CreateSlot(ctx context.Context, conn *pgx.Conn, slot string) (SlotInfo, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return SlotInfo{}, fmt.Errorf("create slot %s: %w", slot, err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0`); err != nil {
		return SlotInfo{}, fmt.Errorf("create slot %s: %w", slot, err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
		return SlotInfo{}, fmt.Errorf("create slot %s: %w", slot, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return SlotInfo{}, fmt.Errorf("create slot %s: %w", slot, err)
	}
	return LookupSlot(ctx, conn, slot)
}

// CheckSlot refuses a slot tandem cannot stream from.
func CheckSlot(si SlotInfo, slot string) error {
	if si.Exists && si.Plugin != "pgoutput" {
		return fmt.Errorf("slot %s uses plugin %s, not pgoutput: pick another source.slot or drop it", slot, si.Plugin)
	}
	return si.LostError(slot)
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
