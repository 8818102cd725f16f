// Command tandem keeps a new PostgreSQL schema in step with an old,
// authoritative database, so a migration can happen under load and be
// rolled back by stopping it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/tandem-migrate/tandem/internal/version"
	"github.com/tandem-migrate/tandem/pkg/backfill"
	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/checkpoint"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/control"
	"github.com/tandem-migrate/tandem/pkg/decoder"
	"github.com/tandem-migrate/tandem/pkg/dial"
	"github.com/tandem-migrate/tandem/pkg/metrics"
	"github.com/tandem-migrate/tandem/pkg/pipeline"
	"github.com/tandem-migrate/tandem/pkg/verify"
)

// exitError carries an exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func main() {
	root := &cobra.Command{
		Use:           "tandem",
		Short:         "Keep a new PostgreSQL schema in step with the old database, for zero-downtime migrations",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	var cfgPath string
	root.PersistentFlags().StringVarP(&cfgPath, "config", "c", "", "migration config file (YAML)")
	root.Version = version.Get().String()
	root.SetVersionTemplate("tandem {{.Version}}\n")
	root.AddCommand(runCmd(&cfgPath), validateCmd(&cfgPath), teardownCmd(&cfgPath), statusCmd(&cfgPath), verifyCmd(&cfgPath), versionCmd(), backfillCmd(&cfgPath), tailCmd(&cfgPath),
		cutoverCmd(&cfgPath), rollbackCmd(&cfgPath))
	applyHelp(root)
	if err := root.Execute(); err != nil {
		code := 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		msg := config.RedactDSN(err.Error())
		fmt.Fprintln(os.Stderr, "tandem: "+msg)
		if h := passwordHint(msg); h != "" {
			fmt.Fprintln(os.Stderr, h)
		}
		os.Exit(code)
	}
}

// withConfig loads the config and runs fn under a context that ends on
// SIGINT/SIGTERM, and after timeout when it is not zero. loadCode is the
// exit code for a config that does not load.
func withConfig(cfgPath *string, timeout time.Duration, loadCode int, fn func(ctx context.Context, cmd *cobra.Command, cfg *config.Config) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		cfg, err := loadConfig(*cfgPath)
		if err != nil {
			return &exitError{code: loadCode, err: err}
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		return fn(ctx, cmd, cfg)
	}
}

func runCmd(cfgPath *string) *cobra.Command {
	return &cobra.Command{
		Use:   "run",
		Short: "Stream changes from the old database into the new schema until stopped",
		RunE: withConfig(cfgPath, 0, 1, func(ctx context.Context, cmd *cobra.Command, cfg *config.Config) error {
			log := newLogger(cfg)
			notes, err := pipeline.Preflight(ctx, cfg)
			if err != nil {
				return fmt.Errorf("preflight failed, nothing was written:\n  %s", strings.ReplaceAll(err.Error(), "\n", "\n  "))
			}
			for _, n := range notes {
				log.Info(n)
			}
			e, err := newEngine(cfg, log)
			if err != nil {
				return err
			}
			reg, p := e.reg, e.pipeline
			// Pause, resume and limits: on a socket only tandem's user can
			// open, never on the metrics listener (pkg/control).
			ctl, err := control.Listen(cfg, p.Backfill.Handler(), log.With("component", "control"))
			if err != nil {
				return err
			}
			g, gctx := errgroup.WithContext(ctx)
			runCtx, cancelRun := context.WithCancel(gctx)
			defer cancelRun()
			g.Go(func() error { return ctl.Serve(runCtx) })
			g.Go(func() error { return reloadOnHUP(runCtx, *cfgPath, p, log) })
			if e.shadow != nil {
				g.Go(func() error { return e.shadow.Run(runCtx) })
			}
			if cfg.Metrics.Listen != "" {
				g.Go(func() error {
					extra := map[string]http.Handler{"/backfill": controlMoved()}
					if err := metrics.Serve(runCtx, cfg.Metrics.Listen, reg, &p.Health, extra, log.With("component", "metrics")); err != nil {
						return fmt.Errorf("metrics.listen %s: %w", cfg.Metrics.Listen, err)
					}
					return nil
				})
			}
			g.Go(func() error {
				defer cancelRun()
				return p.Run(runCtx)
			})
			g.Go(func() error { return e.follow.Run(runCtx) })
			log.Info("tandem running", "source", cfg.Source.Slot, "tables", len(cfg.Tables))
			return g.Wait()
		}),
	}
}

// reloadOnHUP re-reads the config on SIGHUP and applies what can change
// while running: the backfill's limits. Everything else needs a restart,
// which the log says.
func reloadOnHUP(ctx context.Context, path string, p *pipeline.Pipeline, log *slog.Logger) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
		}
		cfg, err := loadConfig(path)
		if err != nil {
			log.Error("config reload failed; keeping the running limits", "err", err)
			continue
		}
		l := backfill.LimitsOf(cfg.Backfill)
		l.Paused = p.Backfill.Limits().Paused
		p.Backfill.Set(l)
		log.Info("config reloaded: backfill limits applied (other changes need a restart)",
			"chunk_rows", l.ChunkRows, "chunk_bytes", l.ChunkBytes, "rows_per_second", l.RowsPerSecond, "bytes_per_second", l.BytesPerSecond)
	}
}

func statusCmd(cfgPath *string) *cobra.Command {
	var asJSON, watch bool
	var interval time.Duration
	var count int
	c := &cobra.Command{
		Use:   "status",
		Short: "Show the stream position, the slot's retained WAL and the backfill's progress",
		RunE: withConfig(cfgPath, 0, 1, func(ctx context.Context, cmd *cobra.Command, cfg *config.Config) error {
			if watch || count > 0 {
				return watchStatus(ctx, cmd.OutOrStdout(), cfg, interval, count, asJSON)
			}
			r, err := gatherStatus(ctx, cfg)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			r.Text(cmd.OutOrStdout())
			return nil
		}),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON (with --watch: one object per line)")
	c.Flags().BoolVarP(&watch, "watch", "w", false, "redraw every --interval until Ctrl-C")
	c.Flags().DurationVar(&interval, "interval", 2*time.Second, "time between frames with --watch")
	c.Flags().IntVar(&count, "count", 0, "with --watch, stop after this many frames (0: until Ctrl-C)")
	return c
}

func verifyCmd(cfgPath *string) *cobra.Command {
	var asJSON bool
	var tables []string
	var live string
	c := &cobra.Command{
		Use:   "verify",
		Short: "Prove the new schema equals the transformed old data (exit 0 equal, 1 differs, 2 could not check)",
		RunE: withConfig(cfgPath, 0, verify.ExitNotCheck, func(ctx context.Context, cmd *cobra.Command, cfg *config.Config) error {
			if cfg.StreamOnly() {
				return &exitError{code: verify.ExitNotCheck, err: errors.New("this migration publishes to NATS only (no target.dsn): there is no new database to verify; a consumer's image can be compared with the old tables (README, NATS JetStream)")}
			}
			log := newLogger(cfg)
			src, err := verify.ConnectFor(ctx, cfg.Source.DSN, cfg.Name)
			if err != nil {
				return &exitError{code: verify.ExitNotCheck, err: fmt.Errorf("source.dsn: %w", err)}
			}
			defer src.Close(context.Background())
			tgt, err := verify.ConnectFor(ctx, cfg.Target.DSN, cfg.Name)
			if err != nil {
				return &exitError{code: verify.ExitNotCheck, err: fmt.Errorf("target.dsn: %w", err)}
			}
			defer tgt.Close(context.Background())
			opts := verify.OptionsFromConfig(cfg)
			opts.Tables = tables
			switch live {
			case "on":
				opts.Live = true
			case "off":
			case "auto":
				// While tandem streams, rows in flight are re-checked once the
				// stream has passed them instead of being reported.
				si, err := decoder.LookupSlot(ctx, src, cfg.Source.Slot)
				opts.Live = err == nil && si.Active
			default:
				return &exitError{code: verify.ExitNotCheck, err: fmt.Errorf("--live must be auto, on or off, not %q", live)}
			}
			// Changes after this position may postdate what the pass saw.
			since, _, serr := checkpoint.ForConfig(cfg, tgt).Load(ctx)
			rep, err := verify.Run(ctx, cfg, src, tgt, opts, log)
			if rep != nil && serr == nil {
				recordPass(ctx, cfg, rep, since, log)
			}
			if rep != nil {
				if asJSON {
					_ = rep.WriteJSON(cmd.OutOrStdout())
				} else {
					_ = rep.WriteText(cmd.OutOrStdout())
				}
			}
			code := verify.ExitNotCheck
			if rep != nil {
				code = rep.ExitCode()
			}
			switch {
			case err != nil:
				return &exitError{code: verify.ExitNotCheck, err: err}
			case code != 0:
				return &exitError{code: code, err: errors.New("the new schema differs from the transformed old data")}
			}
			return nil
		}),
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	c.Flags().StringSliceVar(&tables, "table", nil, "check only this table (source or target name); repeatable")
	c.Flags().StringVar(&live, "live", "auto", "re-check differing rows after the stream passes them: auto (when the slot is active), on, off")
	return c
}

// recordPass keeps the outcome where the cutover gates read it; failing
// to keep it does not change what verify found.
func recordPass(ctx context.Context, cfg *config.Config, rep *verify.Report, since change.LSN, log *slog.Logger) {
	conn, err := dial.Open(ctx, cfg.Target.DSN, dial.Short(cfg.Name, "verify"))
	if err == nil {
		defer conn.Close(context.Background())
		err = verify.Record(ctx, conn, rep, since)
	}
	if err != nil {
		log.Warn("could not record the verify pass for the cutover gates", "err", err)
	}
}

func validateCmd(cfgPath *string) *cobra.Command {
	return &cobra.Command{
		Use:   "validate",
		Short: "Check the config against both databases without writing anything",
		RunE: withConfig(cfgPath, 0, 1, func(ctx context.Context, cmd *cobra.Command, cfg *config.Config) error {
			notes, err := pipeline.Preflight(ctx, cfg)
			for _, n := range notes {
				fmt.Fprintln(cmd.OutOrStdout(), "note: "+n)
			}
			if err == nil {
				err = validateReverse(ctx, cmd.OutOrStdout(), cfg, newLogger(cfg))
			}
			if err != nil {
				return fmt.Errorf("validation failed:\n  %s", strings.ReplaceAll(err.Error(), "\n", "\n  "))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %d table(s) mapped, source and target ready\n", len(cfg.Tables))
			return nil
		}),
	}
}

func teardownCmd(cfgPath *string) *cobra.Command {
	var keepCheckpoint, force, deleteStream bool
	c := &cobra.Command{
		Use:   "teardown",
		Short: "Drop the replication slot and publication (after rollback or cutover) so the old database stops keeping WAL",
		RunE: withConfig(cfgPath, time.Minute, 1, func(ctx context.Context, cmd *cobra.Command, cfg *config.Config) error {
			src, err := dial.Open(ctx, cfg.Source.DSN, dial.Short(cfg.Name, "teardown"))
			if err != nil {
				return fmt.Errorf("source.dsn: cannot connect to the old database: %w", err)
			}
			defer src.Close(context.Background())
			if !force {
				if err := waitSlotReleased(ctx, src, cfg.Source.Slot, slotReleaseWait); err != nil {
					return err
				}
			}
			dropped, err := decoder.DropSlot(ctx, src, cfg.Source.Slot)
			if err != nil {
				return err
			}
			report(cmd, dropped, "dropped", "replication slot "+cfg.Source.Slot)
			dropped, err = decoder.DropPublication(ctx, src, cfg.Source.Publication)
			if err != nil {
				return err
			}
			report(cmd, dropped, "dropped", "publication "+cfg.Source.Publication)
			if err := teardownStream(ctx, cmd, cfg, deleteStream); err != nil || cfg.StreamOnly() {
				return err
			}
			tgt, err := dial.Open(ctx, cfg.Target.DSN, dial.Short(cfg.Name, "teardown"))
			if err != nil {
				return fmt.Errorf("target.dsn: cannot connect to the new database: %w", err)
			}
			defer tgt.Close(context.Background())
			if err := teardownReverse(ctx, cmd, cfg, src, tgt, force, keepCheckpoint); err != nil {
				return err
			}
			if keepCheckpoint || cfg.Checkpoint.Store != "target" {
				return nil
			}
			removed, err := deleteCheckpoint(ctx, tgt, cfg.Name)
			if err != nil {
				return err
			}
			report(cmd, removed, "removed", fmt.Sprintf("checkpoint %q on the target", cfg.Name))
			return nil
		}),
	}
	c.Flags().BoolVar(&keepCheckpoint, "keep-checkpoint", false, "leave tandem's checkpoint rows on the target")
	c.Flags().BoolVar(&deleteStream, "delete-stream", false, "also delete the NATS JetStream stream and its messages (left alone by default: consumers may still read it)")
	c.Flags().BoolVar(&force, "force", false, "drop the slot even while a connection still holds it (terminates that connection)")
	return c
}

// slotReleaseWait is how long teardown waits for a slot held by a connection
// that is going away: a kill -9ed daemon's walsender exits as soon as the
// server sees the socket close, which takes well under a second.
const slotReleaseWait = 5 * time.Second

// waitSlotReleased refuses to drop a slot that a live `tandem run` holds.
// Dropping it would only terminate the stream: the daemon reconnects,
// creates a fresh slot at the current WAL position and, with its checkpoint
// deleted, silently skips everything committed in between.
func waitSlotReleased(ctx context.Context, src *pgx.Conn, slot string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		var pid *int32
		var app, client string
		err := src.QueryRow(ctx, `SELECT s.active_pid, COALESCE(a.application_name, ''), COALESCE(host(a.client_addr), 'local socket')
			FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid
			WHERE s.slot_name = $1`, slot).Scan(&pid, &app, &client)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && pid == nil) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("look up slot %s: %w", slot, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replication slot %s is in use by source backend %d (application %q from %s): stop `tandem run` for this migration first; "+
				"if that process is gone for good (e.g. its host died), run teardown again with --force", slot, *pid, app, client)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// deleteCheckpoint removes the migration's progress rows, reporting whether
// there were any, so a second teardown says so rather than claim it removed
// something.
func deleteCheckpoint(ctx context.Context, tgt *pgx.Conn, name string) (bool, error) {
	existed, err := checkpoint.Exists(ctx, tgt, name)
	if err != nil {
		return false, err
	}
	if err := checkpoint.Delete(ctx, tgt, name); err != nil {
		return false, fmt.Errorf("delete checkpoint %q on the target: %w", name, err)
	}
	return existed, nil
}

func report(cmd *cobra.Command, done bool, verb, what string) {
	if done {
		fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", verb, what)
	} else {
		fmt.Fprintf(cmd.OutOrStdout(), "%s did not exist\n", what)
	}
}
