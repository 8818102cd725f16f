package cutover

import (
	"context"
	"fmt"
	"time"

	"github.com/tandem-migrate/tandem/pkg/checkpoint"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/decoder"
	"github.com/tandem-migrate/tandem/pkg/lifecycle"
	"github.com/tandem-migrate/tandem/pkg/pipeline"
)

// Rollback moves the writes back to the old database after a cutover:
// fence the new database, wait until the reverse stream has carried
// everything back, move the old sequences past the new ones, lift the old
// fence. Forward streaming carries on, so another cutover can follow.
func Rollback(ctx context.Context, cfg *config.Config, opt Options) error {
	c, err := open(ctx, cfg, opt)
	if err != nil {
		return err
	}
	defer c.close()
	switch c.st.Phase {
	case lifecycle.Forward:
		if c.st.Attempt > 0 {
			// A rerun after a rollback killed at its last step says the same.
			c.printf("%s went back to the old database at %s: point the applications at the old database; it takes the writes and tandem streams them forward for the next cutover.", cfg.Name, c.st.Changed.Format(time.RFC3339))
		} else {
			c.printf("%s has not been cut over: the old database is authoritative and holds every write.", cfg.Name)
			c.printf("Rolling back now means: stop tandem run, then tandem teardown --config FILE (drops the slot and publication so the old database stops keeping WAL); the new tables can then be dropped or kept.")
		}
		if !opt.DryRun {
			return c.releaseReverse(ctx, time.Second)
		}
		return nil
	case lifecycle.CuttingOver:
		return fmt.Errorf("a cutover of %s is in progress and has not declared the new database ready: tandem cutover --abort lifts the fence and goes back", cfg.Name)
	case lifecycle.RollingBack:
		if opt.DryRun {
			c.printf("a rollback of %s is in progress (the new database is fenced since %s): run tandem rollback to finish it; a dry run changes nothing", cfg.Name, c.st.FencedAt.Format(time.RFC3339))
			return nil
		}
		c.printf("resuming the rollback of %s started at %s", cfg.Name, c.st.FencedAt.Format(time.RFC3339))
	case lifecycle.CutOver:
		c.printf("rollback of %s: gates", cfg.Name)
		c.gate("tandem run streams back", func() (string, error) {
			return slotActive(ctx, c, true)
		})
		if cfg.Cutover.Fence == config.FenceReadOnly {
			c.gate("fence possible", func() (string, error) {
				if err := canFence(ctx, c.new); err != nil {
					return "", fmt.Errorf("new database: %w", err)
				}
				return "the role may set default_transaction_read_only and end sessions", nil
			})
		}
		c.gate("sequences found", func() (string, error) {
			moves, err := c.reverseSequences(ctx)
			if err != nil {
				return "", err
			}
			c.moves = moves
			return fmt.Sprintf("%d to move past the new values (+%d)", len(moves), cfg.Cutover.SequenceMargin), nil
		})
		// Last, right before the fence (see the cutover's).
		c.gate("reverse lag under cutover.max_lag", func() (string, error) {
			return c.lagProbe(ctx, c.new, c.reverseStore(), "the new database", "the old one")
		})
		if err := c.gatesPassed(); err != nil {
			return err
		}
		if opt.DryRun {
			c.printf("dry run: every gate passes; nothing was changed")
			return nil
		}
		c.st.Phase, c.st.FencedAt, c.st.FenceLSN, c.st.Steps = lifecycle.RollingBack, time.Now(), 0, nil
		if err := c.save(ctx); err != nil {
			return err
		}
	}
	return c.rollback(ctx)
}

// reverseSequences plans the old sequences to move past the new ones.
func (c *ceremony) reverseSequences(ctx context.Context) ([]seqMove, error) {
	rev, err := pipeline.ReverseConfig(ctx, c.cfg, c.old, c.new)
	if err != nil {
		return nil, err
	}
	tables, err := pipeline.Plan(ctx, rev.Config, c.new, c.old)
	if err != nil {
		return nil, err
	}
	return planSequences(ctx, c.new, c.old, mappings(tables), pairsFor(c.cfg, false))
}

func (c *ceremony) reverseStore() checkpoint.Store {
	return checkpoint.ForConfig(pipeline.ReverseBase(c.cfg), c.old)
}

func (c *ceremony) rollback(ctx context.Context) error {
	cfg := c.cfg
	stuck := func(err error) error {
		return fmt.Errorf("%w\nthe new database stays fenced: run tandem rollback again to resume", err)
	}
	if err := c.fenceStep(ctx, c.newSide()); err != nil {
		return stuck(err)
	}
	err := c.drainSteps(ctx, c.newSide(), "old", c.reverseStore(), "reverse checkpoint", "is tandem run streaming the reverse direction?")
	if err != nil {
		return stuck(err)
	}
	err = c.step(ctx, "sequences on the old database", func() (string, error) {
		moves := c.moves
		if moves == nil { // resumed: not planned by the gates
			var err error
			if moves, err = c.reverseSequences(ctx); err != nil {
				return "", err
			}
		}
		lines, err := moveSequences(ctx, c.new, c.old, moves, cfg.Cutover.SequenceMargin)
		return summary(lines), err
	})
	if err != nil {
		return stuck(err)
	}
	if err := c.liftStep(ctx, c.oldSide(), "applications may write again"); err != nil {
		return stuck(err)
	}
	c.st.Phase = lifecycle.Forward
	c.st.Unavailable = time.Since(c.st.FencedAt)
	if err := c.save(ctx); err != nil {
		return stuck(err)
	}
	c.printf("old database ready: point the applications at the old database. Writes were unavailable for %s (fence to ready).", round(c.st.Unavailable))
	if c.st.FencedNew {
		c.printf("The new database stays read-only for applications; tandem keeps it current from the old one, and the next tandem cutover lifts its fence.")
	}
	return c.releaseReverse(ctx, cfg.Cutover.Timeout)
}

// releaseReverse drops the reverse slot once the daemon has let go of it
// (it follows the phase within a second), so the new database stops
// keeping WAL for a stream that no longer runs.
func (c *ceremony) releaseReverse(ctx context.Context, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		si, err := decoder.LookupSlot(ctx, c.new, c.cfg.Reverse.Slot)
		if err != nil {
			return err
		}
		if !si.Exists {
			return nil
		}
		if !si.Active {
			return c.step(ctx, "drop the reverse slot", func() (string, error) {
				if _, err := decoder.DropSlot(ctx, c.new, c.cfg.Reverse.Slot); err != nil {
					return "", err
				}
				if err := c.deleteReverseCheckpoint(ctx); err != nil {
					return "", err
				}
				return "dropped " + c.cfg.Reverse.Slot + "; the next cutover creates a new one", nil
			})
		}
		if time.Now().After(deadline) {
			c.printf("note: the reverse slot %s is still in use; tandem teardown drops it once tandem run has stopped streaming back", c.cfg.Reverse.Slot)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
