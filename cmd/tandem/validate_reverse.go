package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/dial"
	"github.com/tandem-migrate/tandem/pkg/pipeline"
	"github.com/tandem-migrate/tandem/pkg/verify"
)

// validateReverse checks what rollback after cutover will need: the
// inverse of every mapping compiled on both databases, and the round trip
// old -> new -> old proved on the rows, computed by the databases.
func validateReverse(ctx context.Context, out io.Writer, cfg *config.Config, log *slog.Logger) error {
	if cfg.StreamOnly() {
		// No new database: nothing is cut over, nothing streams back.
		return nil
	}
	if !cfg.Reverse.IsEnabled() {
		fmt.Fprintln(out, "note: reverse.enabled is false: this migration is one-way; tandem cutover refuses it, since nothing could carry writes back")
		return nil
	}
	old, err := dial.Open(ctx, cfg.Source.DSN, dial.Short(cfg.Name, "validate"))
	if err != nil {
		return fmt.Errorf("source.dsn: cannot connect to the old database: %s", config.RedactDSN(err.Error()))
	}
	defer old.Close(context.Background())
	new, err := dial.Open(ctx, cfg.Target.DSN, dial.Short(cfg.Name, "validate"))
	if err != nil {
		return fmt.Errorf("target.dsn: cannot connect to the new database: %s", config.RedactDSN(err.Error()))
	}
	defer new.Close(context.Background())
	rev, notes, err := pipeline.CheckReverse(ctx, cfg, old, new)
	for _, n := range notes {
		fmt.Fprintln(out, "note: "+n)
	}
	if err != nil {
		return fmt.Errorf("%w\n(a migration that will never roll back after cutover can say so: reverse: {enabled: false})", err)
	}
	sample := cfg.Reverse.RoundTripSample
	if sample < 0 {
		sample = 0 // every row
	}
	var errs []error
	for i, fwd := range rev.Forward {
		rep, err := verify.RoundTrip(ctx, old, new, fwd, rev.Backward[i], verify.RoundTripOptions{Sample: sample, Log: log})
		if err != nil {
			errs = append(errs, fmt.Errorf("round trip %s -> %s -> back: %w", fwd.SourceName, fwd.TargetName, err))
			continue
		}
		scope := "every row"
		if rep.Sampled {
			scope = fmt.Sprintf("a sample in %d key ranges", rep.Ranges)
		}
		if rep.OK() {
			fmt.Fprintf(out, "round trip %s -> %s -> back: %d rows (%s) come back whole (%s)\n", rep.Table, rep.Via, rep.Rows, scope, strings.Join(rep.Compared, ", "))
			continue
		}
		var cols []string
		for c, n := range rep.Columns {
			cols = append(cols, fmt.Sprintf("%s in %d rows", c, n))
		}
		var ex []string
		for _, r := range rep.Examples {
			ex = append(ex, "    "+r.String())
		}
		errs = append(errs, fmt.Errorf("round trip %s -> %s -> back: %d of %d rows (%s) do not come back: %s; the inverse under tables[].reverse loses what the forward mapping kept, so a rollback after cutover would change these rows. For example:\n%s",
			rep.Table, rep.Via, rep.Lossy, rep.Rows, scope, strings.Join(cols, ", "), strings.Join(ex, "\n")))
	}
	return errors.Join(errs...)
}
