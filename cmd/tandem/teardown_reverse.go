package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/cutover"
	"github.com/tandem-migrate/tandem/pkg/decoder"
	"github.com/tandem-migrate/tandem/pkg/lifecycle"
	"github.com/tandem-migrate/tandem/pkg/pipeline"
)

// teardownReverse removes what cutover added: the reverse slot and
// publication on the new database, the fences tandem set, the reverse
// checkpoint on the old database and the lifecycle row.
func teardownReverse(ctx context.Context, cmd *cobra.Command, cfg *config.Config, old, new *pgx.Conn, force, keepCheckpoint bool) error {
	if !force {
		if err := waitSlotReleased(ctx, new, cfg.Reverse.Slot, slotReleaseWait); err != nil {
			return err
		}
	}
	dropped, err := decoder.DropSlot(ctx, new, cfg.Reverse.Slot)
	if err != nil {
		return fmt.Errorf("new database: %w", err)
	}
	if dropped {
		report(cmd, true, "dropped", "reverse replication slot "+cfg.Reverse.Slot)
	}
	if dropped, err = decoder.DropPublication(ctx, new, cfg.Reverse.Publication); err != nil {
		return fmt.Errorf("new database: %w", err)
	}
	if dropped {
		report(cmd, true, "dropped", "reverse publication "+cfg.Reverse.Publication)
	}
	st, err := lifecycle.Load(ctx, new, cfg.Name)
	if err != nil {
		return err
	}
	lifted, err := cutover.LiftFences(ctx, st, old, new)
	for _, l := range lifted {
		fmt.Fprintln(cmd.OutOrStdout(), "lifted the fence on the "+l+" database")
	}
	if err != nil {
		return err
	}
	if keepCheckpoint {
		return nil
	}
	if _, err := lifecycle.Delete(ctx, new, cfg.Name); err != nil {
		return err
	}
	rc := pipeline.ReverseBase(cfg)
	if rc.Checkpoint.Store == "target" {
		removed, err := deleteCheckpoint(ctx, old, rc.Name)
		if err != nil {
			return err
		}
		if removed {
			report(cmd, true, "removed", fmt.Sprintf("reverse checkpoint %q on the old database", rc.Name))
		}
	}
	return nil
}
