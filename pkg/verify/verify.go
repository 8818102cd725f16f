// Package verify checks that the new (target) database holds exactly what
// the mapping makes of the old (source) one: every source row passing the
// filter, transformed, equals its target row, and the target holds nothing
// else.
//
// The source side is computed on the source: each target column's SQL
// expression over the source row, cast to the target column's type and
// rendered as canonical text, so the comparison is of values, not of their
// spelling. Tables are walked in key ranges; each range is checksummed
// inside each database, so equal ranges cost two short queries and no rows
// cross the network. A differing range is narrowed to its rows by key and
// hash, and only the rows shown as examples are fetched in full, to name
// the differing columns.
//
// Verification only reads: every statement is a SELECT in autocommit, short
// (one chunk), and paced to a rows-per-second budget on the source.
package verify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/checkpoint"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/dial"
)

// Options tunes one verification.
type Options struct {
	// Tables limits the check to mappings whose source or target name is
	// listed ("public.orders" or "orders"); empty means all.
	Tables []string
	// ChunkRows is the number of source rows per checksummed range; 0 uses
	// verify.chunk_rows from the config.
	ChunkRows int
	// RowsPerSecond caps rows read from the source; 0 uses
	// verify.rows_per_second, and 0 there means no cap.
	RowsPerSecond float64
	// Live re-checks differing rows after the stream has caught up, so rows
	// in flight while `tandem run` streams are not reported.
	Live bool
	// MaxExamples is how many rows of each kind a table report names
	// (default 10).
	MaxExamples int
	// WaitTimeout bounds each wait for the stream checkpoint in live mode
	// (default 2m).
	WaitTimeout time.Duration
}

const (
	defaultChunkRows   = 10000
	defaultMaxExamples = 10
	defaultWaitTimeout = 2 * time.Minute
)

// OptionsFromConfig fills Options from the verify section of the config.
func OptionsFromConfig(cfg *config.Config) Options {
	return Options{ChunkRows: cfg.Verify.ChunkRows, RowsPerSecond: cfg.Verify.RowsPerSecond}
}

func (o Options) withDefaults(cfg *config.Config) Options {
	if o.ChunkRows <= 0 {
		o.ChunkRows = cfg.Verify.ChunkRows
	}
	if o.ChunkRows <= 0 {
		o.ChunkRows = defaultChunkRows
	}
	if o.RowsPerSecond == 0 {
		o.RowsPerSecond = cfg.Verify.RowsPerSecond
	}
	if o.MaxExamples <= 0 {
		o.MaxExamples = defaultMaxExamples
	}
	if o.WaitTimeout <= 0 {
		o.WaitTimeout = defaultWaitTimeout
	}
	return o
}

// ConnConfig parses dsn into a connection config for verification: the
// canonical session settings are sent at startup and every transaction is
// read-only, so the server itself refuses any write.
func ConnConfig(dsn string) (*pgx.ConnConfig, error) { return ConnConfigFor(dsn, "") }

// ConnConfigFor is ConnConfig for a named migration (application_name
// tandem/<migration>/verify). Checksumming a range is a long read
// (dial.Long).
func ConnConfigFor(dsn, migration string) (*pgx.ConnConfig, error) {
	cc, err := dial.Config(dsn, dial.Long(migration, "verify"))
	if err != nil {
		return nil, err
	}
	for _, s := range sessionSettings {
		cc.RuntimeParams[s.name] = s.value
	}
	cc.RuntimeParams["default_transaction_read_only"] = "on"
	return cc, nil
}

// Connect opens a connection configured by ConnConfig.
func Connect(ctx context.Context, dsn string) (*pgx.Conn, error) { return ConnectFor(ctx, dsn, "") }

// ConnectFor opens a connection configured by ConnConfigFor.
func ConnectFor(ctx context.Context, dsn, migration string) (*pgx.Conn, error) {
	cc, err := ConnConfigFor(dsn, migration)
	if err != nil {
		return nil, err
	}
	conn, err := dial.OpenConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}

// prepareSession applies the canonical settings on a connection the caller
// opened. They only shape text output (time zone, float digits, ...); the
// caller should not rely on the previous values afterwards.
func prepareSession(ctx context.Context, conn *pgx.Conn) error {
	for _, s := range sessionSettings {
		if _, err := conn.Exec(ctx, "SELECT set_config($1, $2, false)", s.name, s.value); err != nil {
			return fmt.Errorf("set %s: %w", s.name, err)
		}
	}
	return nil
}

// Run verifies every selected table mapping of cfg, source against target.
// src and tgt are used one statement at a time and get the canonical
// session settings (see Connect, which also makes them read-only).
//
// The report is returned even with an error: a table that could not be
// checked carries its reason and the others their results. The error is
// non-nil exactly when some table could not be checked (exit code 2).
func Run(ctx context.Context, cfg *config.Config, src, tgt *pgx.Conn, opts Options, log *slog.Logger) (*Report, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "verify")
	opts = opts.withDefaults(cfg)
	rep := &Report{Name: cfg.Name, Live: opts.Live, StartedAt: time.Now().UTC()}
	defer func() { rep.Seconds = time.Since(rep.StartedAt).Seconds() }()
	fail := func(err error) (*Report, error) {
		rep.Error = err.Error()
		return rep, err
	}
	selected, err := selectTables(cfg.Tables, opts.Tables)
	if err != nil {
		return fail(err)
	}
	for _, conn := range []*pgx.Conn{src, tgt} {
		if err := prepareSession(ctx, conn); err != nil {
			return fail(fmt.Errorf("verify: prepare session: %w", err))
		}
	}
	e := &env{src: src, tgt: tgt, opts: opts, log: log, pace: newPacer(opts.RowsPerSecond), name: cfg.Name}
	if opts.Live {
		e.store = checkpoint.ForConfig(cfg, tgt)
	}
	var errs []error
	for _, i := range selected {
		tr, err := verifyTable(ctx, e, i, cfg.Tables[i])
		if err != nil {
			tr.Error = err.Error()
			errs = append(errs, err)
			log.Error("could not verify table", "source", tr.Source, "target", tr.Target, "err", err)
		}
		rep.Tables = append(rep.Tables, *tr)
		if ctx.Err() != nil {
			break
		}
	}
	return rep, errors.Join(errs...)
}

// verifyTable runs one table to the end; the report is never nil.
func verifyTable(ctx context.Context, e *env, idx int, tc config.TableConfig) (*TableReport, error) {
	if tc.Target == "" {
		tc.Target = tc.Source
	}
	label := checkpoint.MappingKey(tc.Source, tc.Target)
	fail := func(err error) (*TableReport, error) {
		return &TableReport{Source: tc.Source, Target: tc.Target}, fmt.Errorf("verify %s: %w", label, err)
	}
	p, err := buildPlan(ctx, e.src, e.tgt, fmt.Sprintf("tables[%d]", idx), tc)
	if err != nil {
		return fail(err)
	}
	v := newTableVerifier(e, p)
	v.log.Info("verifying", "mode", v.mode(), "chunk_rows", e.opts.ChunkRows)
	for !v.done {
		if _, err := v.step(ctx); err != nil {
			return fail(err)
		}
	}
	tr, err := v.finish(ctx)
	if err != nil {
		tr.Error = err.Error()
		return tr, fmt.Errorf("verify %s: %w", label, err)
	}
	v.log.Info("verified", "compared", tr.Compared, "different", tr.Different, "missing", tr.Missing, "extra", tr.Extra, "seconds", tr.Seconds)
	return tr, nil
}

// selectTables returns the indexes of cfg.Tables to verify. A name that
// matches no mapping is an error: a typo must not pass as "all equal".
func selectTables(tables []config.TableConfig, names []string) ([]int, error) {
	if len(names) == 0 {
		out := make([]int, len(tables))
		for i := range out {
			out[i] = i
		}
		return out, nil
	}
	var out []int
	var errs []error
	picked := map[int]bool{}
	for _, n := range names {
		found := false
		for i, t := range tables {
			if sameTable(n, t.Source) || sameTable(n, t.Target) || (t.Target == "" && sameTable(n, t.Source)) {
				found = true
				if !picked[i] {
					picked[i] = true
					out = append(out, i)
				}
			}
		}
		if !found {
			errs = append(errs, fmt.Errorf("verify: no table mapping has source or target %q", n))
		}
	}
	return out, errors.Join(errs...)
}

// sameTable compares names with the schema defaulting to public.
func sameTable(a, b string) bool {
	as, at, err1 := config.SplitQualified(a)
	bs, bt, err2 := config.SplitQualified(b)
	return err1 == nil && err2 == nil && as == bs && at == bt
}
