// Package cutover runs the two ceremonies that move writes between the
// databases: cutover (old -> new) and rollback (new -> old). Each is a
// sequence of steps, printed with their timings and recorded in the
// migration's lifecycle row after every step that changes something, so a
// ceremony killed at any point is finished (or aborted) by running the
// command again. Gates come first and change nothing: a failed gate exits
// 1 with the old database untouched.
package cutover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/dial"
	"github.com/tandem-migrate/tandem/pkg/lifecycle"
)

// Options for a ceremony run.
type Options struct {
	// DryRun runs every gate and check and changes nothing.
	DryRun bool
	Out    io.Writer
	Log    *slog.Logger
}

// GateError is a failed gate: nothing was changed.
type GateError struct{ Failed []string }

func (e *GateError) Error() string {
	return fmt.Sprintf("%d gate(s) failed; nothing was changed", len(e.Failed))
}

// ceremony holds one run's connections and state.
type ceremony struct {
	cfg      *config.Config
	opt      Options
	old, new *pgx.Conn
	st       lifecycle.State
	failed   []string
	// moves are the sequences to move, planned by the gates so the step
	// inside the fence only applies them (nil when resuming).
	moves []seqMove
}

// open connects to both databases, makes sure only one ceremony of this
// migration runs, and reads the phase.
func open(ctx context.Context, cfg *config.Config, opt Options) (*ceremony, error) {
	if opt.Out == nil {
		opt.Out = io.Discard
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.StreamOnly() {
		return nil, fmt.Errorf("%s publishes to NATS only (no target.dsn): there is no new database to cut over to or roll back from", cfg.Name)
	}
	c := &ceremony{cfg: cfg, opt: opt}
	var err error
	if c.old, err = dial.Open(ctx, cfg.Source.DSN, dial.Short(cfg.Name, "cutover")); err != nil {
		return nil, fmt.Errorf("source.dsn: cannot connect to the old database: %s", config.RedactDSN(err.Error()))
	}
	if c.new, err = dial.Open(ctx, cfg.Target.DSN, dial.Short(cfg.Name, "cutover")); err != nil {
		c.close()
		return nil, fmt.Errorf("target.dsn: cannot connect to the new database: %s", config.RedactDSN(err.Error()))
	}
	// tandem writes through fences it set; a session setting overrides
	// the database's default.
	for _, conn := range []*pgx.Conn{c.old, c.new} {
		if _, err := conn.Exec(ctx, `SET default_transaction_read_only = off`); err != nil {
			c.close()
			return nil, fmt.Errorf("prepare session: %w", err)
		}
	}
	var locked bool
	if err := c.new.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext('tandem/ceremony/' || $1))`, cfg.Name).Scan(&locked); err != nil {
		c.close()
		return nil, fmt.Errorf("take the ceremony lock: %w", err)
	}
	if !locked {
		c.close()
		return nil, fmt.Errorf("another cutover or rollback of %s is running (it holds its lock on the new database); wait for it, or end it", cfg.Name)
	}
	if !opt.DryRun {
		if err := lifecycle.EnsureTable(ctx, c.new); err != nil {
			c.close()
			return nil, err
		}
	}
	if c.st, err = lifecycle.Load(ctx, c.new, cfg.Name); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

func (c *ceremony) close() {
	for _, conn := range []*pgx.Conn{c.old, c.new} {
		if conn != nil {
			conn.Close(context.Background())
		}
	}
}

func (c *ceremony) printf(format string, args ...any) {
	fmt.Fprintf(c.opt.Out, format+"\n", args...)
}

// gate runs a check that changes nothing; a failure is collected so every
// gate is reported, not only the first.
func (c *ceremony) gate(name string, fn func() (string, error)) {
	start := time.Now()
	detail, err := fn()
	took := time.Since(start)
	if err != nil {
		c.failed = append(c.failed, name+": "+err.Error())
		c.printf("  FAIL %-34s %8s  %s", name, round(took), err)
		return
	}
	c.printf("  ok   %-34s %8s  %s", name, round(took), detail)
}

// step runs a step that changes something and records it in the
// lifecycle row, so a rerun knows what is done.
func (c *ceremony) step(ctx context.Context, name string, fn func() (string, error)) error {
	start := time.Now()
	detail, err := fn()
	took := time.Since(start)
	outcome := detail
	if err != nil {
		outcome = "failed: " + err.Error()
		c.printf("  FAIL %-34s %8s  %s", name, round(took), err)
	} else {
		c.printf("  done %-34s %8s  %s", name, round(took), detail)
	}
	c.st.Steps = append(c.st.Steps, lifecycle.Step{Name: name, At: start, Took: took, Outcome: outcome})
	if serr := c.save(ctx); serr != nil {
		return errors.Join(err, serr)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func (c *ceremony) save(ctx context.Context) error {
	// Bounded on its own: the record must land even when the step's
	// context is nearly spent.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return lifecycle.Save(sctx, c.new, c.cfg.Name, &c.st)
}

// gatesPassed reports the collected gate failures.
func (c *ceremony) gatesPassed() error {
	if len(c.failed) == 0 {
		return nil
	}
	return &GateError{Failed: c.failed}
}

func round(d time.Duration) time.Duration {
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond)
	case d < time.Second:
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(time.Millisecond)
}
