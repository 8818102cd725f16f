package lifecycle

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/dial"
	"github.com/tandem-migrate/tandem/pkg/pipeline"
)

// Stream is the reverse pipeline as the follower drives it.
type Stream interface {
	Use(cfg *config.Config)
	Run(ctx context.Context) error
}

var _ Stream = (*pipeline.Pipeline)(nil)

// Follower makes `tandem run` follow the phase recorded by the ceremonies:
// it runs the reverse stream while the new database is authoritative (cut
// over, or rolling back until the reverse lag is 0) and stops it after a
// rollback. The forward stream runs throughout: with the old database
// fenced it has nothing to do, and after a rollback it carries on for the
// next attempt. Each direction skips the other's writes (origins).
type Follower struct {
	cfg      *config.Config
	reverse  Stream
	m        *Metrics
	log      *slog.Logger
	interval time.Duration
}

// NewFollower follows cfg's phase; reverse is the (idle) reverse pipeline.
func NewFollower(cfg *config.Config, reverse Stream, m *Metrics, log *slog.Logger) *Follower {
	return &Follower{cfg: cfg, reverse: reverse, m: m, log: log, interval: time.Second}
}

// Run polls the phase until ctx ends. A reverse stream that stops with a
// fatal error stops the daemon too: rollback depends on it.
func (f *Follower) Run(ctx context.Context) error {
	if f.cfg.StreamOnly() {
		// No new database: nothing to cut over to, no phase to follow.
		return nil
	}
	var (
		conn     *pgx.Conn
		running  *run
		lastWarn time.Time
	)
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
		if running != nil {
			running.stop()
		}
	}()
	warn := func(msg string, err error) {
		if time.Since(lastWarn) > 30*time.Second {
			lastWarn = time.Now()
			f.log.Warn(msg, "err", config.RedactDSN(err.Error()))
		}
	}
	tick := time.NewTicker(f.interval)
	defer tick.Stop()
	for {
		if conn == nil || conn.IsClosed() {
			c, err := dial.Open(ctx, f.cfg.Target.DSN, dial.Short(f.cfg.Name, "lifecycle"))
			if err != nil {
				warn("cannot read the migration's phase from the new database; retrying", err)
			}
			conn = c
		}
		if conn != nil {
			st, err := Load(ctx, conn, f.cfg.Name)
			switch {
			case err != nil && ctx.Err() == nil:
				warn("cannot read the migration's phase; retrying", err)
				conn.Close(context.Background())
				conn = nil
			case err == nil:
				f.m.Set(st)
				if st.Phase.Reversed() && running == nil {
					rc, err := f.reverseConfig(ctx, conn)
					if err != nil {
						warn("the migration is cut over but the reverse stream cannot start; rollback waits for it", err)
						break
					}
					f.reverse.Use(rc)
					running = start(ctx, f.reverse)
					f.log.Info("phase "+string(st.Phase)+": streaming new -> old through the inverse mapping", "slot", f.cfg.Reverse.Slot)
				}
				if !st.Phase.Reversed() && running != nil {
					err := running.stop()
					running = nil
					f.log.Info("phase " + string(st.Phase) + ": reverse stream stopped; the old database is authoritative")
					if err != nil {
						return fmt.Errorf("reverse stream: %w", err)
					}
				}
			}
		}
		var done <-chan error
		if running != nil {
			done = running.done
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-done:
			running.cancel()
			running = nil
			if err != nil {
				return fmt.Errorf("reverse stream (new -> old): %w", err)
			}
		case <-tick.C:
		}
	}
}

// run is one run of the reverse stream.
type run struct {
	cancel context.CancelFunc
	done   chan error
}

func start(ctx context.Context, s Stream) *run {
	rctx, cancel := context.WithCancel(ctx)
	r := &run{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Run(rctx) }()
	return r
}

// stop ends the run (a clean stop: the stream commits what is complete)
// and returns how it ended.
func (r *run) stop() error {
	r.cancel()
	return <-r.done
}

func (f *Follower) reverseConfig(ctx context.Context, new *pgx.Conn) (*config.Config, error) {
	old, err := dial.Open(ctx, f.cfg.Source.DSN, dial.Short(f.cfg.Name, "lifecycle"))
	if err != nil {
		return nil, fmt.Errorf("connect to the old database: %w", err)
	}
	defer old.Close(context.Background())
	rev, err := pipeline.ReverseConfig(ctx, f.cfg, old, new)
	if err != nil {
		return nil, err
	}
	return rev.Config, nil
}
