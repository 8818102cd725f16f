package pipeline

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/dial"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

// Reverse is the stream that runs new -> old after cutover, derived from
// the forward config: the same pipeline with the roles swapped, each table
// mapped through its inverse.
type Reverse struct {
	Config *config.Config
	// Forward and Inverse pair each reversed mapping with the forward one
	// it undoes (same index), for the round-trip proof.
	Forward []*transform.Mapping
	Inverse []config.TableConfig
	// Backward are the inverse mappings compiled against both databases
	// (CheckReverse fills them), same index as Forward.
	Backward []*transform.Mapping
	// Notes say which old columns nothing carries back.
	Notes []string
}

// ReverseBase is the reverse stream's config without its tables: enough
// to find its slot and checkpoint.
func ReverseBase(cfg *config.Config) *config.Config {
	rc := *cfg
	rc.Name = config.ReverseName(cfg.Name)
	rc.Source = config.SourceConfig{
		DSN: cfg.Target.DSN, Slot: cfg.Reverse.Slot, Publication: cfg.Reverse.Publication,
		CreatePublication: cfg.Source.CreatePublication, ReceiveTimeout: cfg.Source.ReceiveTimeout,
		SkipOrigin: config.ForwardOrigin(cfg.Name),
	}
	rc.Target = config.TargetConfig{DSN: cfg.Source.DSN}
	rc.Apply.Origin = config.ReverseOrigin(cfg.Name)
	rc.Apply.OriginRequired = true
	// The two databases agree when the reverse slot is created (cutover
	// waited for it), so there is nothing to copy.
	off := false
	rc.Backfill.Enabled = &off
	rc.Verify.Continuous = false
	rc.Metrics.Listen = ""
	rc.Control = config.ControlConfig{}
	// The fan-out follows the old database's WAL (its message ids and
	// resume point are positions in it); the reverse stream does not
	// publish.
	rc.NATS = config.NATSConfig{}
	if cfg.Checkpoint.Store == "file" {
		rc.Checkpoint.Path = cfg.Checkpoint.Path + ".rev"
	}
	rc.Tables = nil
	return &rc
}

// ReverseConfig derives the reverse stream from cfg. old and new are
// connections to the old and new databases (cfg's source and target).
func ReverseConfig(ctx context.Context, cfg *config.Config, old, new *pgx.Conn) (*Reverse, error) {
	rc := ReverseBase(cfg)
	rev := &Reverse{Config: rc}
	var errs []error
	for i, tc := range cfg.Tables {
		if !carriedBack(tc) {
			continue
		}
		field := fmt.Sprintf("tables[%d]", i)
		st, tt, err := transform.LoadTables(ctx, field, tc, old, new)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		fwd, err := transform.Plan(ctx, field, tc, transform.SourceFromCatalog(st), st.ReplicaIdentity, tt, new)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		inv, err := transform.Invert(field, fwd, st, transform.SourceFromCatalog(tt), tc.Reverse)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rc.Tables = append(rc.Tables, inv.Table)
		rev.Forward = append(rev.Forward, fwd)
		rev.Inverse = append(rev.Inverse, inv.Table)
		if len(inv.NotCarried) > 0 {
			rev.Notes = append(rev.Notes, fmt.Sprintf("reverse: %s columns %v get no value from the new schema; rows inserted on the new database after cutover take their defaults there", tc.Source, inv.NotCarried))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return rev, nil
}

// carriedBack reports whether a forward mapping takes part in the reverse
// stream (one of several new tables fed by a split old table may not).
func carriedBack(tc config.TableConfig) bool { return tc.Reverse == nil || !tc.Reverse.Skip }

// ReverseTables lists the new tables the reverse stream reads: its
// publication's tables. Known from the config alone, so a cutover can
// create the publication inside the fence without reading a catalog.
func ReverseTables(cfg *config.Config) []string {
	var out []string
	for _, tc := range cfg.Tables {
		if carriedBack(tc) {
			out = append(out, config.Qualified(tc.Target))
		}
	}
	return out
}

// PreflightReverse checks, writing nothing, everything the reverse stream
// will need after cutover: logical decoding on the new database, the
// inverse of every mapping compiled and type-checked on the old one, and
// the privileges its apply session needs there.
func PreflightReverse(ctx context.Context, cfg *config.Config) (*Reverse, []string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	old, err := dial.Open(ctx, cfg.Source.DSN, dial.Short(cfg.Name, "validate"))
	if err != nil {
		return nil, nil, fmt.Errorf("source.dsn: cannot connect to the old database: %s", config.RedactDSN(err.Error()))
	}
	defer old.Close(context.Background())
	new, err := dial.Open(ctx, cfg.Target.DSN, dial.Short(cfg.Name, "validate"))
	if err != nil {
		return nil, nil, fmt.Errorf("target.dsn: cannot connect to the new database: %s", config.RedactDSN(err.Error()))
	}
	defer new.Close(context.Background())
	return CheckReverse(ctx, cfg, old, new)
}

// CheckReverse is PreflightReverse on open connections.
func CheckReverse(ctx context.Context, cfg *config.Config, old, new *pgx.Conn) (*Reverse, []string, error) {
	rev, err := ReverseConfig(ctx, cfg, old, new)
	if err != nil {
		return nil, nil, reverseError(err)
	}
	rc := rev.Config
	errs, notes := sourceChecks(ctx, rc, new)
	tables, err := Plan(ctx, rc, new, old)
	if err != nil {
		errs = append(errs, err)
	} else {
		for _, t := range tables {
			rev.Backward = append(rev.Backward, t.Mapping)
		}
	}
	if err := targetChecks(ctx, rc, old, tables); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return rev, nil, reverseError(err)
	}
	return rev, append(rev.Notes, notes...), nil
}

// reverseError says which way a problem lies: in the reverse stream the
// new database is the source and the old one the target.
func reverseError(err error) error {
	return fmt.Errorf("reverse stream (new -> old, after cutover; here source means the new database and target the old one):\n%w", err)
}
