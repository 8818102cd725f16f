package pipeline

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/dial"
)

// Two session-level advisory locks on the new database keep one migration
// to one writer.
//
// The migration lock is held by a connection of its own for the daemon's
// life: a second `tandem run` of the migration finds it taken and refuses
// to start. That connection is idle, so when a daemon is killed the server
// reads the closed socket at once and frees the lock for its successor.
//
// The apply lock is held by the session that writes rows. A session whose
// client gave up on it (a deadline on a silent link) may still be running
// on the server, and a COMMIT of it that the server processes late would
// apply changes a fresh session applies again. The fresh session takes the
// apply lock before it reads the checkpoint, and since the daemon holds
// the migration lock, any other holder is a session of a tandem that no
// longer runs: it is ended, which commits or rolls back its transaction
// whole, before tandem reads where to resume.

// lockClass is the first key of tandem's advisory locks ("tand").
const lockClass = 0x74616e64

func lockKey(name, what string) int32 {
	h := fnv.New32a()
	h.Write([]byte(what + "\x00" + name))
	return int32(h.Sum32() & 0x7fffffff)
}

const holdersSQL = `SELECT l.pid, COALESCE(a.application_name, ''), COALESCE(host(a.client_addr), 'local socket'),
	COALESCE(to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ'), '')
	FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
	WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::int4::oid AND l.objid = $2::int4::oid AND l.objsubid = 2
	AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`

type holder struct {
	pid              int32
	app, from, since string
}

func lockHolders(ctx context.Context, conn *pgx.Conn, key int32) ([]holder, error) {
	rows, err := conn.Query(ctx, holdersSQL, int32(lockClass), key)
	if err != nil {
		return nil, fmt.Errorf("target: who holds tandem's lock: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (holder, error) {
		var h holder
		err := r.Scan(&h.pid, &h.app, &h.from, &h.since)
		return h, err
	})
}

func tryLock(ctx context.Context, conn *pgx.Conn, key int32) (bool, error) {
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, $2)`, int32(lockClass), key).Scan(&ok); err != nil {
		return false, fmt.Errorf("target: take tandem's lock: %w", err)
	}
	return ok, nil
}

// AnotherRunError is a second `tandem run` of a migration that runs.
type AnotherRunError struct {
	Migration string
	Holder    holder
}

func (e *AnotherRunError) Error() string {
	h := e.Holder
	return fmt.Sprintf("another `tandem run` of migration %q is running: it holds the migration's lock on the new database (backend %d, application %q, from %s, connected %s). "+
		"Stop it first: two runs of one migration would contend for the slot and write the same rows. "+
		"If that process is gone for good, the new database ends its session once it notices; to end it now: SELECT pg_terminate_backend(%d) on the new database",
		e.Migration, h.pid, h.app, h.from, h.since, h.pid)
}

// migrationLock is the daemon's hold on its migration.
type migrationLock struct {
	cfg  *config.Config
	log  *slog.Logger
	conn *pgx.Conn
	// pid is the backend of a connection of ours that was lost: if it
	// still holds the lock, its client is gone and it may be ended.
	pid int32
	// grace is how long a held lock is retried before refusing: a daemon
	// killed a moment ago may not have been noticed by the server yet.
	grace time.Duration
}

func newMigrationLock(cfg *config.Config, log *slog.Logger) *migrationLock {
	return &migrationLock{cfg: cfg, log: log, grace: 3 * time.Second}
}

// ensure makes sure the lock is held, taking it again after a lost
// connection. It returns an *AnotherRunError (fatal) when another run
// holds it.
func (l *migrationLock) ensure(ctx context.Context) error {
	key := lockKey(l.cfg.Name, "migration")
	if l.conn != nil {
		qctx, cancel := context.WithTimeout(ctx, l.cfg.Source.ReceiveTimeout)
		var held bool
		err := l.conn.QueryRow(qctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
			AND classid = $1::int4::oid AND objid = $2::int4::oid AND objsubid = 2)`, int32(lockClass), key).Scan(&held)
		cancel()
		if err == nil && held {
			return nil
		}
		l.pid = int32(l.conn.PgConn().PID())
		l.close()
	}
	cctx, cancel := context.WithTimeout(ctx, dial.ConnectTimeout+l.cfg.Source.ReceiveTimeout)
	defer cancel()
	dsn, which := l.cfg.Target.DSN, "target"
	if l.cfg.StreamOnly() {
		// No new database: the old one holds the lock (one idle session).
		dsn, which = l.cfg.Source.DSN, "source"
	}
	conn, err := dial.Open(cctx, dsn, dial.Short(l.cfg.Name, "lock"))
	if err != nil {
		return fmt.Errorf("connect to %s database: %w", which, err)
	}
	deadline := time.Now().Add(l.grace)
	for {
		ok, err := tryLock(cctx, conn, key)
		if err != nil {
			conn.Close(context.Background())
			return err
		}
		if ok {
			l.conn = conn
			return nil
		}
		holders, err := lockHolders(cctx, conn, key)
		if err != nil {
			conn.Close(context.Background())
			return err
		}
		for _, h := range holders {
			if h.pid == l.pid && l.pid != 0 {
				// Our own session from before the link broke.
				l.log.Warn("ending this daemon's previous lock session, which outlived its link", "backend", h.pid)
				_, _ = conn.Exec(cctx, `SELECT pg_terminate_backend($1)`, h.pid)
				deadline = time.Now().Add(l.grace)
			}
		}
		if time.Now().After(deadline) && len(holders) > 0 {
			conn.Close(context.Background())
			return &FatalError{Err: &AnotherRunError{Migration: l.cfg.Name, Holder: holders[0]}}
		}
		select {
		case <-cctx.Done():
			conn.Close(context.Background())
			return cctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (l *migrationLock) close() {
	if l.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.conn.Close(ctx)
	l.conn = nil
}

// fenceApply takes the apply lock on the session that will write rows,
// ending sessions of tandems that no longer run which still hold it. The
// caller holds the migration lock.
func fenceApply(ctx context.Context, tgt *pgx.Conn, name string, log *slog.Logger) error {
	key := lockKey(name, "apply")
	ended := false
	for {
		ok, err := tryLock(ctx, tgt, key)
		if err != nil || ok {
			return err
		}
		if !ended {
			holders, err := lockHolders(ctx, tgt, key)
			if err != nil {
				return err
			}
			for _, h := range holders {
				log.Warn("ending an earlier apply session of this migration that outlived its client; its transaction commits or rolls back whole before tandem reads its checkpoint",
					"backend", h.pid, "application", h.app, "from", h.from)
				if _, err := tgt.Exec(ctx, `SELECT pg_terminate_backend($1)`, h.pid); err != nil {
					return &retryError{fmt.Errorf("target: backend %d still holds this migration's apply lock and cannot be ended (%w): end it by hand with SELECT pg_terminate_backend(%d)", h.pid, err, h.pid)}
				}
			}
			ended = true
		}
		select {
		case <-ctx.Done():
			return &retryError{fmt.Errorf("target: an earlier apply session of this migration still holds its lock: %w", ctx.Err())}
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// retryError is a failure worth a retry that Retryable would not
// recognise by its cause.
type retryError struct{ err error }

func (e *retryError) Error() string { return e.err.Error() }
func (e *retryError) Unwrap() error { return e.err }

func isRetryError(err error) bool {
	var r *retryError
	return errors.As(err, &r)
}
