package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/sink"
)

// teardownStream deletes the migration's JetStream stream when asked
// (--delete-stream); otherwise it leaves it, and its messages, to the
// services that consume them, and says so.
func teardownStream(ctx context.Context, cmd *cobra.Command, cfg *config.Config, deleteStream bool) error {
	if !cfg.NATS.Enabled() {
		return nil
	}
	if !deleteStream {
		fmt.Fprintf(cmd.OutOrStdout(), "left JetStream stream %s as it is (consumers may still read it); teardown --delete-stream removes it\n", cfg.NATS.Stream)
		return nil
	}
	deleted, err := sink.DeleteStream(ctx, cfg.NATS, cfg.Name, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	report(cmd, deleted, "deleted", "JetStream stream "+cfg.NATS.Stream)
	return nil
}
