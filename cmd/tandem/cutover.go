package main

import (
	"context"
	"errors"

	"github.com/spf13/cobra"

	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/cutover"
)

func cutoverCmd(cfgPath *string) *cobra.Command {
	var dryRun, abort bool
	c := &cobra.Command{
		Use:   "cutover",
		Short: "Move the writes to the new database: gates, fence, final check, sequences, reverse stream",
		Long: `Runs the cutover as a ceremony, each step printed with its timing:
gates (tandem run streaming, backfill done, lag under cutover.max_lag, last
verify pass within cutover.max_divergence, reverse stream possible), then
fence the old database, wait until the new one has every change before the
fence, final check (cutover.verify), move sequences, create the reverse slot,
and report "new database ready". A failed gate changes nothing and exits 1.
Killed at any point, run it again: it resumes; --abort lifts the fence of a
cutover that has not finished. tandem run (which must be running) streams
new -> old from then on, so tandem rollback loses nothing.`,
		RunE: withConfig(cfgPath, 0, 1, func(ctx context.Context, cmd *cobra.Command, cfg *config.Config) error {
			opt := cutover.Options{DryRun: dryRun, Out: cmd.OutOrStdout(), Log: newLogger(cfg)}
			if abort {
				return ceremonyExit(cutover.Abort(ctx, cfg, opt))
			}
			return ceremonyExit(cutover.Cutover(ctx, cfg, opt))
		}),
	}
	c.Flags().BoolVar(&dryRun, "dry-run", false, "run every gate and check, change nothing")
	c.Flags().BoolVar(&abort, "abort", false, "lift the fence of an unfinished cutover and go back to streaming forward")
	return c
}

func rollbackCmd(cfgPath *string) *cobra.Command {
	var dryRun bool
	c := &cobra.Command{
		Use:   "rollback",
		Short: "Move the writes back to the old database after a cutover, losing none made on the new one",
		Long: `After a cutover: gates (tandem run streaming back, reverse lag under
cutover.max_lag), fence the new database, wait until the old one has every
change made on the new one, move the old sequences past the new ones, lift
the old fence, and say "point the applications at the old database".
Forward streaming carries on, so a second cutover can follow. Before a
cutover it explains what rolling back means then. Killed at any point, run
it again: it resumes.`,
		RunE: withConfig(cfgPath, 0, 1, func(ctx context.Context, cmd *cobra.Command, cfg *config.Config) error {
			return ceremonyExit(cutover.Rollback(ctx, cfg, cutover.Options{DryRun: dryRun, Out: cmd.OutOrStdout(), Log: newLogger(cfg)}))
		}),
	}
	c.Flags().BoolVar(&dryRun, "dry-run", false, "run every gate and check, change nothing")
	return c
}

// ceremonyExit keeps exit code 1 for a failed gate (the gates were
// printed above the error) and for any other failure.
func ceremonyExit(err error) error {
	var g *cutover.GateError
	if errors.As(err, &g) {
		return &exitError{code: 1, err: err}
	}
	return err
}
