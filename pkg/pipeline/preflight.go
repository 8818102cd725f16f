package pipeline

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/decoder"
)

// Preflight checks everything `tandem run` needs without writing anything:
// both databases reachable, logical decoding possible on the source, a
// replication role, a free slot, and every table mapping planned and
// type-checked. It returns every problem, each with its fix.
func Preflight(ctx context.Context, cfg *config.Config) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var errs []error
	src, err := pgx.Connect(ctx, cfg.Source.DSN)
	if err != nil {
		errs = append(errs, fmt.Errorf("source.dsn: cannot connect to the old database: %s; check host, port, user and that it is running", config.RedactDSN(err.Error())))
	} else {
		defer src.Close(context.Background())
	}
	tgt, err := pgx.Connect(ctx, cfg.Target.DSN)
	if err != nil {
		errs = append(errs, fmt.Errorf("target.dsn: cannot connect to the new database: %s; check host, port, user and that it is running", config.RedactDSN(err.Error())))
	} else {
		defer tgt.Close(context.Background())
	}
	if src == nil || tgt == nil {
		return errors.Join(errs...)
	}
	errs = append(errs, sourceChecks(ctx, cfg, src)...)
	if _, err := Plan(ctx, cfg, src, tgt); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func sourceChecks(ctx context.Context, cfg *config.Config, src *pgx.Conn) []error {
	var errs []error
	var walLevel string
	var version int
	if err := src.QueryRow(ctx, `SELECT current_setting('wal_level'), current_setting('server_version_num')::int`).Scan(&walLevel, &version); err != nil {
		return append(errs, fmt.Errorf("source: read settings: %w", err))
	}
	if walLevel != "logical" {
		errs = append(errs, fmt.Errorf("source: wal_level is %q, logical decoding needs wal_level = logical: set it in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart the old database", walLevel))
	}
	if version < 140000 {
		errs = append(errs, fmt.Errorf("source: PostgreSQL %d is too old; tandem needs 14 or newer on the old database", version/10000))
	}
	var canReplicate bool
	if err := src.QueryRow(ctx, `SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&canReplicate); err != nil {
		errs = append(errs, fmt.Errorf("source: read role: %w", err))
	} else if !canReplicate {
		errs = append(errs, fmt.Errorf("source: the role connecting has no REPLICATION privilege: ALTER ROLE <user> REPLICATION"))
	}
	si, err := decoder.LookupSlot(ctx, src, cfg.Source.Slot)
	if err != nil {
		return append(errs, err)
	}
	if si.Exists && si.Plugin != "pgoutput" {
		errs = append(errs, fmt.Errorf("source.slot: slot %s uses plugin %s, not pgoutput: pick another name or drop it", cfg.Source.Slot, si.Plugin))
	}
	if !si.Exists {
		var free int
		err := src.QueryRow(ctx, `SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)`).Scan(&free)
		if err == nil && free <= 0 {
			errs = append(errs, fmt.Errorf("source: no free replication slot (max_replication_slots reached): raise max_replication_slots and restart, or drop an unused slot"))
		}
	}
	return errs
}
