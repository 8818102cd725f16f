package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tandem-migrate/tandem/pkg/config"
)

// prepareTarget readies a session that writes the new database.
//
// Durability: the slot is confirmed as soon as a target COMMIT returns, so
// that COMMIT must mean "flushed". A new database run with
// synchronous_commit = off (common while it is bulk-loaded) acknowledges
// before the WAL is on disk; a crash then loses transactions the old
// database was told it may forget. tandem raises only "off" (to "on", which
// also waits for synchronous standbys where there are any): every other
// value already flushes locally and is the user's choice.
//
// Replica role: rows arrive in the old database's commit order and chunks
// interleave with the stream, so foreign keys on the new schema would
// refuse a child whose parent's chunk is not copied yet, and ordinary
// triggers (last_update, search vectors) would rewrite copied values.
// PostgreSQL's own apply worker runs as a replica for the same reasons.
func prepareTarget(ctx context.Context, conn *pgx.Conn, apply config.ApplyConfig) error {
	var sc string
	if err := conn.QueryRow(ctx, `SELECT current_setting('synchronous_commit')`).Scan(&sc); err != nil {
		return fmt.Errorf("target: read synchronous_commit: %w", err)
	}
	if sc == "off" {
		if _, err := conn.Exec(ctx, `SET synchronous_commit = on`); err != nil {
			return fmt.Errorf("target: SET synchronous_commit = on: %w", err)
		}
	}
	if apply.Replica() {
		if _, err := conn.Exec(ctx, `SET session_replication_role = replica`); err != nil {
			if isPermissionDenied(err) {
				return &FatalError{Err: replicaRoleError(err)}
			}
			return fmt.Errorf("target: SET session_replication_role = replica: %w", err)
		}
	}
	return nil
}

func isPermissionDenied(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42501"
}

func replicaRoleError(err error) error {
	return fmt.Errorf("target: the role writing the new database may not set session_replication_role (%v), which tandem needs so that foreign keys and triggers of the new schema do not fire for copied rows: run GRANT SET ON PARAMETER session_replication_role TO <target user> (PostgreSQL 15+; on managed services grant the admin role), or use a superuser, or set apply.session_replication_role: origin if the new schema has no foreign keys among the mapped tables", err)
}

// checkReplicaRole tries the setting inside a transaction that is rolled
// back, so validate learns exactly what run would, and changes nothing.
func checkReplicaRole(ctx context.Context, conn *pgx.Conn) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `SET LOCAL session_replication_role = replica`); err != nil {
		if isPermissionDenied(err) {
			return replicaRoleError(err)
		}
		return fmt.Errorf("target: SET session_replication_role = replica: %w", err)
	}
	return nil
}

// setupOrigin tags everything the apply session commits with origin, so
// the stream running the other way (after cutover, or both around the
// switch) recognises tandem's own writes by the Origin message pgoutput
// sends for them and skips them instead of echoing them back.
//
// PostgreSQL 15 lets one session at a time use an origin: the apply lock
// (fenceApply) has already ended an earlier session of this migration.
func setupOrigin(ctx context.Context, conn *pgx.Conn, apply config.ApplyConfig, log *slog.Logger) error {
	origin := apply.Origin
	if origin == "" {
		return nil
	}
	_, err := conn.Exec(ctx, `SELECT pg_replication_origin_create($1) WHERE NOT EXISTS (SELECT FROM pg_replication_origin WHERE roname = $1)`, origin)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		err = nil // created meanwhile by another session
	}
	if err == nil {
		_, err = conn.Exec(ctx, `SELECT pg_replication_origin_session_setup($1)`, origin)
	}
	switch {
	case err == nil:
		return nil
	case isPermissionDenied(err) && !apply.OriginRequired:
		// Only the reverse stream's tags are indispensable: with the old
		// database fenced, the forward stream has nothing to write while
		// the reverse one runs.
		log.Warn("writing without a replication origin", "reason", originError(err))
		return nil
	case isPermissionDenied(err):
		return &FatalError{Err: originError(err)}
	case errors.As(err, &pgErr) && pgErr.Code == "55006":
		return &retryError{fmt.Errorf("target: replication origin %s is in use by another session (a stale apply session of this migration?): %w", origin, err)}
	}
	return fmt.Errorf("target: set up replication origin %s: %w", origin, err)
}

func originError(err error) error {
	return fmt.Errorf("target: the role writing the database may not use replication origins (%v), which tandem uses to tag its writes so the stream running the other way after cutover does not send them back: use a superuser, or run GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text), pg_replication_origin_session_setup(text) TO <user> as a superuser", err)
}

// checkOrigin tells validate what setupOrigin will find, changing nothing.
func checkOrigin(ctx context.Context, conn *pgx.Conn) error {
	var ok bool
	err := conn.QueryRow(ctx, `SELECT has_function_privilege('pg_replication_origin_session_setup(text)', 'EXECUTE')
		AND has_function_privilege('pg_replication_origin_create(text)', 'EXECUTE')`).Scan(&ok)
	if err != nil {
		return fmt.Errorf("target: check replication origin privileges: %w", err)
	}
	if !ok {
		return originError(errors.New("permission denied for pg_replication_origin_session_setup"))
	}
	return nil
}
