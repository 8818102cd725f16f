package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/decoder"
	"github.com/tandem-migrate/tandem/pkg/dial"
)

// Preflight checks everything `tandem run` needs without writing anything:
// both databases reachable, logical decoding possible on the source, a
// replication role, a free slot, and every table mapping planned and
// type-checked. It returns every problem, each with its fix, and notes on
// what it found that shapes how tables are applied (see Describe).
func Preflight(ctx context.Context, cfg *config.Config) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if cfg.StreamOnly() {
		return preflightStreamOnly(ctx, cfg)
	}
	var errs []error
	src, err := dial.Open(ctx, cfg.Source.DSN, dial.Short(cfg.Name, "validate"))
	if err != nil {
		errs = append(errs, fmt.Errorf("source.dsn: cannot connect to the old database: %s; check host, port, user and that it is running", config.RedactDSN(err.Error())))
	} else {
		defer src.Close(context.Background())
	}
	tgt, err := dial.Open(ctx, cfg.Target.DSN, dial.Short(cfg.Name, "validate"))
	if err != nil {
		errs = append(errs, fmt.Errorf("target.dsn: cannot connect to the new database: %s; check host, port, user and that it is running", config.RedactDSN(err.Error())))
	} else {
		defer tgt.Close(context.Background())
	}
	if src == nil || tgt == nil {
		return nil, errors.Join(errs...)
	}
	srcErrs, slotNotes := sourceChecks(ctx, cfg, src)
	errs = append(errs, srcErrs...)
	tables, err := Plan(ctx, cfg, src, tgt)
	if err != nil {
		errs = append(errs, err)
	}
	if err := targetChecks(ctx, cfg, tgt, tables); err != nil {
		errs = append(errs, err)
	}
	if err := checkOrigin(ctx, tgt); err != nil && !cfg.Apply.OriginRequired {
		slotNotes = append(slotNotes, fmt.Sprintf("%v. Without it tandem's forward writes are untagged; the reverse stream after cutover then relies on the old database being fenced", err))
	}
	natsNotes, err := checkNATS(ctx, cfg)
	if err != nil {
		errs = append(errs, err)
	}
	return append(append(slotNotes, Describe(tables)...), natsNotes...), errors.Join(errs...)
}

// targetChecks makes sure rows can land in the new schema in the order
// they arrive: either the sessions run as replicas (foreign keys and
// ordinary triggers off, as for PostgreSQL's own apply worker), or no
// foreign key links the mapped tables.
func targetChecks(ctx context.Context, cfg *config.Config, tgt *pgx.Conn, tables []*Table) error {
	if cfg.Apply.OriginRequired {
		if err := checkOrigin(ctx, tgt); err != nil {
			return err
		}
	}
	fks, err := foreignKeys(ctx, tgt, tables)
	if err != nil {
		return err
	}
	if !cfg.Apply.Replica() {
		if len(fks) == 0 {
			return nil
		}
		return fmt.Errorf("apply.session_replication_role: origin leaves the new schema's foreign keys on, and these link mapped tables, so rows that arrive before their parents (copied and streamed rows interleave) would be refused: %s; use replica (the default) or drop these foreign keys until cutover", strings.Join(fks, "; "))
	}
	err = checkReplicaRole(ctx, tgt)
	if err != nil && len(fks) > 0 {
		err = fmt.Errorf("%w. Without it these foreign keys would refuse rows that arrive before their parents: %s", err, strings.Join(fks, "; "))
	}
	return err
}

// foreignKeys lists the new schema's foreign keys among mapped tables.
func foreignKeys(ctx context.Context, tgt *pgx.Conn, tables []*Table) ([]string, error) {
	var oids []uint32
	for _, t := range tables {
		oids = append(oids, t.Mapping.Target.OID)
	}
	if len(oids) == 0 {
		return nil, nil
	}
	rows, err := tgt.Query(ctx, `SELECT format('%s on %s -> %s', quote_ident(conname), conrelid::regclass, confrelid::regclass)
		FROM pg_constraint WHERE contype = 'f' AND conrelid = ANY($1) AND confrelid = ANY($1) AND conparentid = 0 ORDER BY 1`, oids)
	if err != nil {
		return nil, fmt.Errorf("target: foreign keys among mapped tables: %w", err)
	}
	fks, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("target: foreign keys among mapped tables: %w", err)
	}
	return fks, nil
}

func sourceChecks(ctx context.Context, cfg *config.Config, src *pgx.Conn) ([]error, []string) {
	var errs []error
	var notes []string
	var walLevel string
	var version int
	if err := src.QueryRow(ctx, `SELECT current_setting('wal_level'), current_setting('server_version_num')::int`).Scan(&walLevel, &version); err != nil {
		return append(errs, fmt.Errorf("source: read settings: %w", err)), nil
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
		return append(errs, err), notes
	}
	if si.Exists && si.Plugin != "pgoutput" {
		errs = append(errs, fmt.Errorf("source.slot: slot %s uses plugin %s, not pgoutput: pick another name or drop it", cfg.Source.Slot, si.Plugin))
	}
	if err := si.LostError(cfg.Source.Slot); err != nil {
		errs = append(errs, fmt.Errorf("source.slot: %w", err))
	}
	if si.WALStatus == "unreserved" {
		notes = append(notes, fmt.Sprintf("WARNING: replication slot %s is unreserved: it holds %d bytes of WAL, more than max_slot_wal_keep_size allows, and the old database invalidates it at its next checkpoint unless tandem catches up first; once lost, the migration must start over. Raise max_slot_wal_keep_size now.", cfg.Source.Slot, si.RetainedBytes))
	}
	if !si.Exists {
		var free int
		err := src.QueryRow(ctx, `SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)`).Scan(&free)
		if err == nil && free <= 0 {
			errs = append(errs, fmt.Errorf("source: no free replication slot (max_replication_slots reached): raise max_replication_slots and restart, or drop an unused slot"))
		}
	}
	return errs, notes
}
