package pipeline

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-migrate/tandem/internal/testkit"
)

// TestFenceEndsStaleApplySession: a session that outlived its client (the
// client gave up on a silent link; the server still runs it) holds the
// apply lock with a transaction open. A new run ends it before reading the
// checkpoint, so it can never commit after that, and then streams.
func TestFenceEndsStaleApplySession(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	cfg := env.Config("fence")
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	stale := testkit.Connect(t, env.TargetDSN)
	if _, err := stale.Exec(ctx, `SELECT pg_advisory_lock($1, $2)`, int32(lockClass), lockKey(cfg.Name, "apply")); err != nil {
		t.Fatal(err)
	}
	if _, err := stale.Exec(ctx, `BEGIN; INSERT INTO marker (id, at) VALUES (99, now())`); err != nil {
		t.Fatal(err)
	}

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	p := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	go func() { done <- p.Run(runCtx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	alive := func() error {
		select {
		case err := <-done:
			done <- err
			return err
		default:
			return nil
		}
	}
	testkit.WaitSlot(t, src, "fence", time.Minute)
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, time.Minute, alive)
	if _, err := stale.Exec(ctx, `SELECT 1`); err == nil {
		t.Error("the stale session still runs")
	}
	var n int
	if err := tgt.QueryRow(ctx, `SELECT count(*) FROM marker WHERE id = 99`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Error("the stale session's transaction was committed")
	}
}
