package cutover

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/lifecycle"
)

// The fence is PostgreSQL's default_transaction_read_only for the whole
// database, and the end of every application session that started before
// it (a setting of the database only reaches new sessions). It guards
// against mistakes, not against a session that sets transaction_read_only
// = off on purpose; tandem's own sessions (application_name tandem/...)
// are left alone, and its writing sessions turn the default off for
// themselves.

// fenceSQL sets the fence on the database conn is connected to.
func fenceSQL(db string) string {
	return "ALTER DATABASE " + pgx.Identifier{db}.Sanitize() + " SET default_transaction_read_only = on"
}

// unfenceSQL lifts it.
func unfenceSQL(db string) string {
	return "ALTER DATABASE " + pgx.Identifier{db}.Sanitize() + " RESET default_transaction_read_only"
}

// sessionsBefore selects the application sessions that may still write:
// client backends of this database started before the fence, not tandem's.
const sessionsBefore = `FROM pg_stat_activity
	WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
	AND COALESCE(application_name, '') NOT LIKE 'tandem/%' AND backend_start <= $1`

// fence makes the database read-only for applications and ends the
// sessions that started before, returning how many it ended.
func fence(ctx context.Context, conn *pgx.Conn, timeout time.Duration) (int, error) {
	db, err := currentDatabase(ctx, conn)
	if err != nil {
		return 0, err
	}
	if _, err := conn.Exec(ctx, fenceSQL(db)); err != nil {
		return 0, fmt.Errorf("ALTER DATABASE %s SET default_transaction_read_only = on: %w (the role needs to own the database, or be superuser)", db, err)
	}
	// Every session started from here on reads the new default.
	var since time.Time
	if err := conn.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&since); err != nil {
		return 0, err
	}
	ended := 0
	deadline := time.Now().Add(timeout)
	for {
		var signalled, left int
		err := conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)), count(*) `+sessionsBefore, since).Scan(&signalled, &left)
		if err != nil {
			return ended, fmt.Errorf("end application sessions: %w (the role needs pg_signal_backend, or superuser to end a superuser's session)", err)
		}
		if left == 0 {
			return ended, nil
		}
		ended = max(ended, left)
		if time.Now().After(deadline) {
			return ended, fmt.Errorf("%d application session(s) started before the fence did not end within %s", left, timeout)
		}
		select {
		case <-ctx.Done():
			return ended, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// unfence lets applications write again.
func unfence(ctx context.Context, conn *pgx.Conn) error {
	db, err := currentDatabase(ctx, conn)
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, unfenceSQL(db)); err != nil {
		return fmt.Errorf("ALTER DATABASE %s RESET default_transaction_read_only: %w", db, err)
	}
	return nil
}

// fenced reports whether the database's default is read-only.
func fenced(ctx context.Context, conn *pgx.Conn) (bool, error) {
	var on bool
	err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
		WHERE d.datname = current_database() AND s.setrole = 0 AND 'default_transaction_read_only=on' = ANY(s.setconfig))`).Scan(&on)
	return on, err
}

// canFence checks, changing nothing, that the role may set the fence.
func canFence(ctx context.Context, conn *pgx.Conn) error {
	var super, owner, signal bool
	err := conn.QueryRow(ctx, `SELECT r.rolsuper, pg_has_role(d.datdba, 'USAGE'), pg_has_role('pg_signal_backend', 'USAGE')
		FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = current_database()`).Scan(&super, &owner, &signal)
	if err != nil {
		return fmt.Errorf("read the role's privileges: %w", err)
	}
	switch {
	case super:
		return nil
	case !owner:
		return fmt.Errorf("the role is neither superuser nor the database's owner, so it cannot ALTER DATABASE ... SET default_transaction_read_only: grant ownership, or set cutover.fence: none and stop writes with the applications' own switch")
	case !signal:
		return fmt.Errorf("the role cannot end application sessions: GRANT pg_signal_backend TO <user>, or set cutover.fence: none")
	}
	return nil
}

func currentDatabase(ctx context.Context, conn *pgx.Conn) (string, error) {
	var db string
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		return "", fmt.Errorf("current_database(): %w", err)
	}
	return db, nil
}

// LiftFences lifts the fences a lifecycle state says tandem set (teardown),
// naming the databases it lifted them on.
func LiftFences(ctx context.Context, st lifecycle.State, old, new *pgx.Conn) ([]string, error) {
	var lifted []string
	for _, f := range []struct {
		set  bool
		conn *pgx.Conn
		name string
	}{{st.FencedOld, old, "old"}, {st.FencedNew, new, "new"}} {
		if !f.set {
			continue
		}
		if err := unfence(ctx, f.conn); err != nil {
			return lifted, fmt.Errorf("%s database: %w", f.name, err)
		}
		lifted = append(lifted, f.name)
	}
	return lifted, nil
}
