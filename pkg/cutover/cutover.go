package cutover

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/checkpoint"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/decoder"
	"github.com/tandem-migrate/tandem/pkg/lifecycle"
	"github.com/tandem-migrate/tandem/pkg/pipeline"
	"github.com/tandem-migrate/tandem/pkg/transform"
	"github.com/tandem-migrate/tandem/pkg/verify"
)

// Cutover moves the writes from the old database to the new one: gates,
// fence, wait for the fence marker, final check, sequences, reverse slot,
// ready. Rerun after a kill, it resumes after the last recorded step.
func Cutover(ctx context.Context, cfg *config.Config, opt Options) error {
	c, err := open(ctx, cfg, opt)
	if err != nil {
		return err
	}
	defer c.close()
	switch c.st.Phase {
	case lifecycle.CutOver:
		c.printf("%s is cut over since %s: the new database takes the writes (tandem rollback goes back)", cfg.Name, c.st.Changed.Format(time.RFC3339))
		return nil
	case lifecycle.RollingBack:
		return fmt.Errorf("a rollback of %s is in progress: finish it with tandem rollback", cfg.Name)
	case lifecycle.CuttingOver:
		if opt.DryRun {
			c.printf("a cutover of %s is in progress (the old database is fenced since %s): run tandem cutover to finish it, or tandem cutover --abort to lift the fence; a dry run changes nothing", cfg.Name, c.st.FencedAt.Format(time.RFC3339))
			return nil
		}
		c.printf("resuming the cutover of %s started at %s", cfg.Name, c.st.FencedAt.Format(time.RFC3339))
	case lifecycle.Forward:
		c.printf("cutover of %s: gates", cfg.Name)
		c.forwardGates(ctx)
		if err := c.gatesPassed(); err != nil {
			return err
		}
		if opt.DryRun {
			c.printf("dry run: every gate passes; nothing was changed")
			return nil
		}
		c.st.Phase, c.st.FencedAt, c.st.FenceLSN, c.st.Steps = lifecycle.CuttingOver, time.Now(), 0, nil
		c.st.Attempt++
		if err := c.save(ctx); err != nil {
			return err
		}
	}
	return c.cutover(ctx)
}

func (c *ceremony) forwardGates(ctx context.Context) {
	cfg := c.cfg
	c.gate("tandem run is streaming", func() (string, error) {
		return slotActive(ctx, c, false)
	})
	if cfg.Backfill.IsEnabled() {
		c.gate("backfill done", func() (string, error) {
			progress, err := checkpoint.LoadProgress(ctx, c.new, cfg.Name)
			if err != nil {
				return "", err
			}
			var rows int64
			var pending []string
			for _, tc := range cfg.Tables {
				p, ok := progress[checkpoint.MappingKey(tc.Source, tc.Target)]
				rows += p.RowsCopied
				if !ok || !p.Done {
					pending = append(pending, fmt.Sprintf("%s (%d rows so far)", tc.Target, p.RowsCopied))
				}
			}
			if len(pending) > 0 {
				return "", fmt.Errorf("still copying %s: wait for it (tandem status)", strings.Join(pending, ", "))
			}
			return fmt.Sprintf("%d table(s), %d rows", len(cfg.Tables), rows), nil
		})
	}
	c.gate("last verify pass", func() (string, error) {
		return c.divergence(ctx)
	})
	c.gate("reverse stream ready", func() (string, error) {
		if !cfg.Reverse.IsEnabled() {
			return "", fmt.Errorf("reverse.enabled is false, so nothing could carry writes back after cutover: write the inverse of each mapping (tables[].reverse), check it with tandem validate, and enable it")
		}
		_, notes, err := pipeline.CheckReverse(ctx, cfg, c.old, c.new)
		if err != nil {
			return "", err
		}
		for _, n := range notes {
			c.printf("       note: %s", n)
		}
		return fmt.Sprintf("slot %s on the new database, inverse of every mapping checked", cfg.Reverse.Slot), nil
	})
	if cfg.Cutover.Fence == config.FenceReadOnly {
		c.gate("fence possible", func() (string, error) {
			if err := canFence(ctx, c.old); err != nil {
				return "", fmt.Errorf("old database: %w", err)
			}
			return "the role may set default_transaction_read_only and end sessions", nil
		})
	}
	c.gate("no prepared transactions", func() (string, error) {
		return noPrepared(ctx, c)
	})
	c.gate("sequences found", func() (string, error) {
		moves, err := c.forwardSequences(ctx)
		if err != nil {
			return "", err
		}
		// Planned here, outside the fence, and used inside it.
		c.moves = moves
		return fmt.Sprintf("%d to move past the old values (+%d)", len(moves), cfg.Cutover.SequenceMargin), nil
	})
	// Last, right before the fence: what the stream still has to apply
	// when the fence goes up is waited for inside the window.
	c.gate("lag under cutover.max_lag", func() (string, error) {
		return c.lagProbe(ctx, c.old, checkpoint.ForConfig(cfg, c.new), "the old database", "the new one")
	})
}

// lagProbe measures the lag end to end: a marker written on from must
// reach the other side's checkpoint within cutover.max_lag.
func (c *ceremony) lagProbe(ctx context.Context, from *pgx.Conn, to checkpoint.Store, fromName, toName string) (string, error) {
	lsn, err := marker(ctx, from, c.cfg.Name, "lag probe")
	if err != nil {
		return "", err
	}
	took, err := waitCheckpoint(ctx, to, lsn, c.cfg.Cutover.MaxLag)
	if err != nil {
		return "", fmt.Errorf("a change written on %s did not reach %s within %s (%w): wait for the lag to drop (tandem status)", fromName, toName, c.cfg.Cutover.MaxLag, err)
	}
	return fmt.Sprintf("a change took %s to arrive (max %s)", round(took), c.cfg.Cutover.MaxLag), nil
}

// divergence judges each table's last recorded verify pass.
func (c *ceremony) divergence(ctx context.Context) (string, error) {
	passes, err := checkpoint.LoadVerifyPasses(ctx, c.new, c.cfg.Name)
	if err != nil {
		return "", err
	}
	var bad []string
	var worst float64
	for _, tc := range c.cfg.Tables {
		t := config.Qualified(tc.Target)
		p, ok := passes[t]
		switch {
		case !ok:
			bad = append(bad, fmt.Sprintf("%s has no recorded pass: run tandem verify --config FILE --live (or set verify.continuous: true) first", t))
		case p.Ratio() > c.cfg.Cutover.MaxDivergence:
			bad = append(bad, fmt.Sprintf("%s: %d of %d rows differed at %s (ratio %.4g > cutover.max_divergence %.4g): run tandem verify to see them", t, p.Differing, p.Compared, p.Finished.Format(time.RFC3339), p.Ratio(), c.cfg.Cutover.MaxDivergence))
		default:
			worst = max(worst, p.Ratio())
		}
	}
	if len(bad) > 0 {
		return "", errors.New(strings.Join(bad, "; "))
	}
	return fmt.Sprintf("%d table(s), worst divergence ratio %.4g", len(c.cfg.Tables), worst), nil
}

func (c *ceremony) cutover(ctx context.Context) error {
	cfg := c.cfg
	if err := c.fenceStep(ctx, c.oldSide()); err != nil {
		return c.stuck(err)
	}
	err := c.drainSteps(ctx, c.oldSide(), "new", checkpoint.ForConfig(cfg, c.new), "checkpoint", "is tandem run streaming this migration?")
	if err != nil {
		return c.stuck(err)
	}
	var diffs error
	err = c.step(ctx, "final check ("+cfg.Cutover.Verify+")", func() (string, error) {
		detail, err := c.finalCheck(ctx)
		var d *divergedError
		if errors.As(err, &d) {
			diffs = err
		}
		return detail, err
	})
	if diffs != nil {
		if aerr := c.abort(ctx); aerr != nil {
			return errors.Join(diffs, aerr)
		}
		return fmt.Errorf("%w: the cutover was aborted and the old database takes writes again", diffs)
	}
	if err != nil {
		return c.stuck(err)
	}
	err = c.step(ctx, "sequences on the new database", func() (string, error) {
		moves := c.moves
		if moves == nil { // resumed: not planned by the gates
			var err error
			if moves, err = c.forwardSequences(ctx); err != nil {
				return "", err
			}
		}
		lines, err := moveSequences(ctx, c.old, c.new, moves, cfg.Cutover.SequenceMargin)
		return summary(lines), err
	})
	if err != nil {
		return c.stuck(err)
	}
	err = c.step(ctx, "reverse slot on the new database", func() (string, error) {
		return c.reverseSlot(ctx)
	})
	if err != nil {
		return c.stuck(err)
	}
	if err := c.liftStep(ctx, c.newSide(), "left by the last rollback"); err != nil {
		return c.stuck(err)
	}
	c.st.Phase = lifecycle.CutOver
	c.st.Unavailable = time.Since(c.st.FencedAt)
	if err := c.save(ctx); err != nil {
		return c.stuck(err)
	}
	c.printf("new database ready: point the applications at it. Writes were unavailable for %s (fence to ready).", round(c.st.Unavailable))
	c.printf("tandem run now streams new -> old through the inverse mapping; tandem rollback goes back without losing a write.")
	return nil
}

// stuck explains a failure inside the fence: nothing is lost, and the
// command resumes or aborts.
func (c *ceremony) stuck(err error) error {
	return fmt.Errorf("%w\nthe old database stays fenced: run tandem cutover again to resume, or tandem cutover --abort to lift the fence and go back", err)
}

type divergedError struct{ msg string }

func (e *divergedError) Error() string { return e.msg }

// finalCheck verifies the tables the mode asks for, inside the fence.
func (c *ceremony) finalCheck(ctx context.Context) (string, error) {
	cfg := c.cfg
	if cfg.Cutover.Verify == config.VerifyNone {
		return "skipped (cutover.verify: none)", nil
	}
	var tables []string
	if cfg.Cutover.Verify == config.VerifyChanged {
		passes, err := checkpoint.LoadVerifyPasses(ctx, c.new, cfg.Name)
		if err != nil {
			return "", err
		}
		activity, err := checkpoint.LoadActivity(ctx, c.new, cfg.Name)
		if err != nil {
			return "", err
		}
		for _, tc := range cfg.Tables {
			t := config.Qualified(tc.Target)
			p, ok := passes[t]
			if !ok || p.Differing > 0 || activity[t] > p.LSN || cfg.Checkpoint.Store != "target" {
				tables = append(tables, t)
			}
		}
		if len(tables) == 0 {
			return "no table written since its last clean pass", nil
		}
	}
	src, err := verify.ConnectFor(ctx, cfg.Source.DSN, cfg.Name)
	if err != nil {
		return "", err
	}
	defer src.Close(context.Background())
	tgt, err := verify.ConnectFor(ctx, cfg.Target.DSN, cfg.Name)
	if err != nil {
		return "", err
	}
	defer tgt.Close(context.Background())
	since, _, err := checkpoint.ForConfig(cfg, c.new).Load(ctx)
	if err != nil {
		return "", err
	}
	rep, err := verify.Run(ctx, cfg, src, tgt, verify.Options{Tables: tables, Live: true}, c.opt.Log)
	if rerr := verify.Record(ctx, c.new, rep, since); rerr != nil {
		c.opt.Log.Warn("could not record the final check", "err", rerr)
	}
	if err != nil {
		return "", err
	}
	var rows int64
	var bad []string
	for _, t := range rep.Tables {
		rows += t.Compared
		if t.Diffs() > 0 {
			ex := ""
			if len(t.Examples) > 0 {
				ex = ", e.g. " + t.Examples[0].String()
			}
			bad = append(bad, fmt.Sprintf("%s: %d different, %d missing, %d extra%s", t.Target, t.Different, t.Missing, t.Extra, ex))
		}
	}
	if len(bad) > 0 {
		return "", &divergedError{msg: "the final check found differences: " + strings.Join(bad, "; ")}
	}
	return fmt.Sprintf("%d table(s), %d rows equal", len(rep.Tables), rows), nil
}

func (c *ceremony) forwardSequences(ctx context.Context) ([]seqMove, error) {
	tables, err := pipeline.Plan(ctx, c.cfg, c.old, c.new)
	if err != nil {
		return nil, err
	}
	return planSequences(ctx, c.old, c.new, mappings(tables), pairsFor(c.cfg, true))
}

func mappings(tables []*pipeline.Table) []*transform.Mapping {
	out := make([]*transform.Mapping, len(tables))
	for i, t := range tables {
		out[i] = t.Mapping
	}
	return out
}

// reverseSlot creates the reverse stream's publication and slot on the
// new database before it may take a write, so none is missed.
func (c *ceremony) reverseSlot(ctx context.Context) (string, error) {
	cfg := c.cfg
	// The gates compiled the inverse; the publication only needs names.
	if err := decoder.EnsurePublication(ctx, c.new, cfg.Reverse.Publication, pipeline.ReverseTables(cfg), *cfg.Source.CreatePublication); err != nil {
		return "", fmt.Errorf("reverse publication: %w", err)
	}
	si, err := decoder.LookupSlot(ctx, c.new, cfg.Reverse.Slot)
	if err != nil {
		return "", err
	}
	if si.Exists {
		return fmt.Sprintf("slot %s exists (at %s)", cfg.Reverse.Slot, si.ConfirmedFlush), nil
	}
	// An earlier attempt's reverse position means nothing to a new slot.
	if err := c.deleteReverseCheckpoint(ctx); err != nil {
		return "", err
	}
	cctx, cancel := context.WithTimeout(ctx, c.cfg.Cutover.Timeout)
	defer cancel()
	si, err = decoder.CreateSlot(cctx, c.new, cfg.Reverse.Slot)
	if err != nil {
		return "", fmt.Errorf("create reverse slot %s (it waits for transactions open on the new database): %w", cfg.Reverse.Slot, err)
	}
	return fmt.Sprintf("slot %s created at %s", cfg.Reverse.Slot, si.ConfirmedFlush), nil
}

func (c *ceremony) deleteReverseCheckpoint(ctx context.Context) error {
	rc := pipeline.ReverseBase(c.cfg)
	if rc.Checkpoint.Store == "file" {
		if err := os.Remove(rc.Checkpoint.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove the reverse checkpoint file: %w", err)
		}
		return nil
	}
	return checkpoint.Delete(ctx, c.old, rc.Name)
}

// abort lifts the old fence and goes back to streaming forward.
func (c *ceremony) abort(ctx context.Context) error {
	if err := c.liftStep(ctx, c.oldSide(), "applications may write again"); err != nil {
		return err
	}
	err := c.step(ctx, "drop the reverse slot", func() (string, error) {
		dropped, err := decoder.DropSlot(ctx, c.new, c.cfg.Reverse.Slot)
		if err != nil || !dropped {
			return "none was created", err
		}
		return "dropped " + c.cfg.Reverse.Slot, nil
	})
	if err != nil {
		return err
	}
	c.st.Phase, c.st.FenceLSN = lifecycle.Forward, 0
	return c.save(ctx)
}

// Abort lifts the fence of a cutover that has not declared the new
// database ready, and goes back to streaming forward.
func Abort(ctx context.Context, cfg *config.Config, opt Options) error {
	c, err := open(ctx, cfg, opt)
	if err != nil {
		return err
	}
	defer c.close()
	switch c.st.Phase {
	case lifecycle.CutOver:
		return fmt.Errorf("%s is already cut over and the new database may have taken writes: use tandem rollback, which carries them back", cfg.Name)
	case lifecycle.RollingBack:
		return fmt.Errorf("a rollback of %s is in progress: finish it with tandem rollback", cfg.Name)
	case lifecycle.Forward:
		if !c.st.FencedOld {
			c.printf("no cutover of %s is in progress; nothing to abort", cfg.Name)
			return nil
		}
	}
	if opt.DryRun {
		c.printf("dry run: would lift the old database's fence and drop the reverse slot")
		return nil
	}
	if err := c.abort(ctx); err != nil {
		return err
	}
	c.printf("cutover aborted: the old database takes writes again and tandem streams forward")
	return nil
}

// slotActive checks that the daemon holds a direction's slot.
func slotActive(ctx context.Context, c *ceremony, reverse bool) (string, error) {
	conn, slot := c.old, c.cfg.Source.Slot
	if reverse {
		conn, slot = c.new, c.cfg.Reverse.Slot
	}
	var si decoder.SlotInfo
	var err error
	// The daemon follows the phase once a second and reconnects with
	// backoff: give it a moment before calling it absent.
	for i := 0; i < 50; i++ {
		if si, err = decoder.LookupSlot(ctx, conn, slot); err != nil {
			return "", err
		}
		if si.Exists && si.Active {
			return fmt.Sprintf("slot %s is in use", slot), nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if !si.Exists {
		return "", fmt.Errorf("slot %s does not exist: start tandem run --config FILE and let it catch up", slot)
	}
	return "", fmt.Errorf("slot %s is not in use: tandem run is not streaming this migration; start it", slot)
}

func noPrepared(ctx context.Context, c *ceremony) (string, error) {
	var n int
	if err := c.old.QueryRow(ctx, `SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()`).Scan(&n); err != nil {
		return "", err
	}
	if n > 0 {
		return "", fmt.Errorf("%d prepared transaction(s) on the old database could still commit after the fence: COMMIT PREPARED or ROLLBACK PREPARED them first (pg_prepared_xacts)", n)
	}
	return "none on the old database", nil
}
