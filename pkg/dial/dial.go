// Package dial opens every connection tandem makes to PostgreSQL, so that
// each one gets the same defaults: a connect timeout, TCP keepalives, an
// application_name that names the migration and the part of tandem behind
// it (tandem/<migration>/<role>, as pg_stat_activity shows it), and
// server-side timeouts chosen for what the session does.
//
// A setting the DSN gives itself (connect_timeout, statement_timeout,
// lock_timeout as DSN parameters) wins over these defaults, except on the
// replication connection, which must never time out a statement.
package dial

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tandem-migrate/tandem/pkg/config"
)

// ConnectTimeout applies when the DSN has no connect_timeout: a host that
// accepts and never answers must not hang validate or a reconnect forever.
const ConnectTimeout = 10 * time.Second

// keepAlive makes the kernel notice a peer that vanished without a reset
// (a dead host, a dropped NAT entry) after about a minute of silence on an
// idle connection, instead of the two hours Linux waits by default. It
// does not see a link that drops data while the peer's kernel still
// acknowledges it (a proxy that stops forwarding): the application-level
// deadlines (source.receive_timeout, apply.statement_timeout) do.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3}

// Timeouts of tandem's sessions. Why these values:
//
//   - Short sessions (catalog lookups, CREATE/ALTER PUBLICATION, the lag
//     poll, status, validate, teardown, refetching a row by key) finish in
//     milliseconds. A minute of statement_timeout and ten seconds of
//     lock_timeout mean none of them can hold the old database: above all,
//     a publication change queued behind a long transaction would otherwise
//     make every later query on those tables queue behind it.
//   - Long reads (backfill chunks, verify ranges) are bounded by chunk_rows
//     and chunk_bytes (at most 1M rows or 1 GiB) and may legitimately run
//     for minutes on a slow disk; fifteen minutes covers the largest chunk
//     a config allows while still ending a read that something wedged. They
//     wait up to a minute for a lock: they only take ACCESS SHARE, which
//     waits for DDL alone, and failing sooner would restart the stream.
//   - The replication connection runs one statement for its whole life.
//   - The apply session on the new database gets apply.statement_timeout,
//     the same bound tandem puts on each of its calls, so a statement that
//     outlived a call that gave up (the client closed the socket) does not
//     keep running and holding row locks on the server. It has no
//     lock_timeout: the new database has no other writer before cutover,
//     so a lock wait means someone's DDL there (CREATE INDEX while
//     migrating), and waiting for it is better than failing and retrying
//     the same wait in a loop.
const (
	ShortStatementTimeout = time.Minute
	ShortLockTimeout      = 10 * time.Second
	LongStatementTimeout  = 15 * time.Minute
	LongLockTimeout       = time.Minute
)

// Spec says what a session is for.
type Spec struct {
	Migration string
	Role      string // source, poll, replication, backfill, target, lock, status, verify, validate, teardown, ...
	// Settings are sent at startup unless the DSN sets them itself.
	Settings map[string]string
	// replication opens a logical replication connection.
	replication bool
}

func timeouts(statement, lock time.Duration) map[string]string {
	return map[string]string{"statement_timeout": ms(statement), "lock_timeout": ms(lock)}
}

func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

// Short is a session of quick statements on either database.
func Short(migration, role string) Spec {
	return Spec{Migration: migration, Role: role, Settings: timeouts(ShortStatementTimeout, ShortLockTimeout)}
}

// Long is a session of bounded but possibly long reads.
func Long(migration, role string) Spec {
	return Spec{Migration: migration, Role: role, Settings: timeouts(LongStatementTimeout, LongLockTimeout)}
}

// Apply is the session that writes the new database; statement is
// apply.statement_timeout.
func Apply(migration string, statement time.Duration) Spec {
	return Spec{Migration: migration, Role: "target", Settings: timeouts(statement, 0)}
}

// Replication is the logical replication connection. Its timeouts are off
// whatever the DSN or the role's defaults say: START_REPLICATION is one
// statement that lasts as long as the stream.
func Replication(migration string) Spec {
	return Spec{Migration: migration, Role: "replication", replication: true}
}

// With returns s with one more startup setting.
func (s Spec) With(name, value string) Spec {
	settings := make(map[string]string, len(s.Settings)+1)
	for k, v := range s.Settings {
		settings[k] = v
	}
	settings[name] = value
	s.Settings = settings
	return s
}

// AppName is the application_name of a session.
func AppName(migration, role string) string {
	if migration == "" {
		return "tandem/" + role
	}
	return "tandem/" + migration + "/" + role
}

// Config parses dsn and applies s. Callers may add runtime parameters of
// their own before connecting.
func Config(dsn string, s Spec) (*pgx.ConnConfig, error) {
	if strings.TrimSpace(dsn) == "" {
		// libpq would read an empty DSN as "the local default server",
		// which is never the database a migration means (a migration
		// whose only target is the stream has no target.dsn).
		return nil, fmt.Errorf("no DSN configured for the %s connection", s.Role)
	}
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		// The parse error may quote the DSN, password included.
		return nil, fmt.Errorf("parse DSN: %s", config.RedactDSN(err.Error()))
	}
	apply(&cc.Config, s)
	return cc, nil
}

func apply(c *pgconn.Config, s Spec) {
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = ConnectTimeout
	}
	d := &net.Dialer{KeepAliveConfig: keepAlive}
	c.DialFunc = d.DialContext
	// The name must say which migration and which part of tandem a session
	// is, whatever PGAPPNAME or the DSN say: teardown and operators look
	// for it in pg_stat_activity.
	c.RuntimeParams["application_name"] = AppName(s.Migration, s.Role)
	// A cutover fence (default_transaction_read_only for the database)
	// stops the applications, not tandem: the reverse stream writes the
	// fenced old database, markers and watermarks are written through it.
	c.RuntimeParams["default_transaction_read_only"] = "off"
	for k, v := range s.Settings {
		if _, set := c.RuntimeParams[k]; !set {
			c.RuntimeParams[k] = v
		}
	}
	if s.replication {
		c.RuntimeParams["replication"] = "database"
		c.RuntimeParams["statement_timeout"] = "0"
		c.RuntimeParams["lock_timeout"] = "0"
	}
}

// Open connects a pgx connection.
func Open(ctx context.Context, dsn string, s Spec) (*pgx.Conn, error) {
	cc, err := Config(dsn, s)
	if err != nil {
		return nil, err
	}
	return OpenConfig(ctx, cc)
}

// OpenConfig connects with a config from Config.
func OpenConfig(ctx context.Context, cc *pgx.ConnConfig) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, redacted(err)
	}
	return conn, nil
}

// OpenPg connects a low-level connection (replication, backfill).
func OpenPg(ctx context.Context, dsn string, s Spec) (*pgconn.PgConn, error) {
	cc, err := Config(dsn, s)
	if err != nil {
		return nil, err
	}
	conn, err := pgconn.ConnectConfig(ctx, &cc.Config)
	if err != nil {
		return nil, redacted(err)
	}
	return conn, nil
}

// Error is a connection failure whose text carries no password; the
// original stays reachable (errors.As) for deciding whether to retry.
type Error struct {
	msg string
	err error
}

func (e *Error) Error() string { return e.msg }
func (e *Error) Unwrap() error { return e.err }

func redacted(err error) error {
	return &Error{msg: config.RedactDSN(err.Error()), err: err}
}
