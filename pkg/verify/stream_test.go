package verify_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-migrate/tandem/internal/testkit"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/pipeline"
	"github.com/tandem-migrate/tandem/pkg/verify"
)

// TestLiveWithStream verifies while tandem streams a random write load
// (inserts, updates, key changes, deletes, rows moving in and out of a
// filter, TRUNCATE): live mode must report no divergence. Then one row is
// damaged on the target behind the stream's back, and live mode must
// report exactly that row. It lives outside package verify so the daemon
// may one day import verify without an import cycle.
func TestLiveWithStream(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	cfg := env.Config("verifylive")
	// Group source transactions into target commits of up to half a
	// second, so every verify pass meets rows in flight.
	cfg.Apply.CommitInterval = 500 * time.Millisecond
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	runCtx, stopStream := context.WithCancel(ctx)
	streamDone := make(chan error, 1)
	go func() { streamDone <- pipeline.New(cfg, log, prometheus.NewRegistry()).Run(runCtx) }()
	t.Cleanup(func() {
		stopStream()
		if err := <-streamDone; err != nil {
			t.Errorf("stream stopped with error: %v", err)
		}
	})
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	testkit.WaitSlot(t, src, "verifylive", time.Minute)

	bulk := 5000
	if testing.Short() {
		bulk = 1000
	}
	w := testkit.NewWorkload(src, 11)
	if err := w.BigTransaction(ctx, bulk); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		if err := w.Step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Keep writing while verify runs, so rows are in flight at every read.
	writing, stopWriting := context.WithCancel(ctx)
	wrote := make(chan error, 1)
	go func() {
		var err error
		n := 0
		for writing.Err() == nil && err == nil {
			err = w.Step(writing)
			n++
			time.Sleep(2 * time.Millisecond)
		}
		t.Logf("background writer: %d transactions", n)
		if writing.Err() != nil {
			err = nil
		}
		wrote <- err
	}()
	opts := verify.Options{Live: true, ChunkRows: 50, WaitTimeout: 30 * time.Second}
	for round := 1; round <= 2; round++ {
		rep := runLive(t, cfg, opts)
		if !rep.OK() {
			t.Errorf("round %d: live verify reported divergence under load:\n%s", round, text(rep))
		}
	}

	// Whether the free-running rounds above met rows in flight depends on
	// timing; this round makes it certain. A lock on the target holds the
	// applier back while the source changes, and is let go only once
	// verify waits for the stream, so the changes are in flight at verify's
	// first read and must settle in the re-check.
	hold, err := tgt.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Rollback(ctx) //nolint:errcheck // released below; this covers failures
	if _, err := hold.Exec(ctx, `LOCK TABLE orders_v2 IN EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	// Its own session: src belongs to the background writer.
	if _, err := testkit.Connect(t, env.SourceDSN).Exec(ctx, `UPDATE orders SET note = 'held back' WHERE id IN (SELECT id FROM orders ORDER BY id LIMIT 5)`); err != nil {
		t.Fatal(err)
	}
	// Polled from its own session: inside a transaction pg_stat_activity
	// is a snapshot that never changes.
	watch := testkit.Connect(t, env.TargetDSN)
	waitActivity(t, watch, `wait_event_type = 'Lock' AND application_name NOT LIKE 'tandem%verify'`)
	type result struct {
		rep *verify.Report
		err error
	}
	held := make(chan result, 1)
	go func() {
		rep, err := verifyLive(cfg, opts)
		held <- result{rep, err}
	}()
	waitActivity(t, watch, `application_name LIKE 'tandem%verify' AND query LIKE '%tandem.checkpoint%'`)
	if err := hold.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	res := <-held
	if res.err != nil {
		t.Fatalf("held round: live verify could not check: %v", res.err)
	}
	rep := res.rep
	var rechecked int64
	for _, tr := range rep.Tables {
		rechecked += tr.Rechecked
	}
	t.Logf("rows in flight at first read, settled by live re-checks: %d", rechecked)
	if !rep.OK() || rechecked < 5 {
		t.Errorf("held round: want OK with at least the 5 held-back rows settled by re-checks, got %d:\n%s", rechecked, text(rep))
	}

	// A write to the target that did not come from the stream is real
	// divergence; the marker table is not touched by the workload.
	if _, err := tgt.Exec(ctx, `INSERT INTO marker (id, at) VALUES (424242, now())`); err != nil {
		t.Fatal(err)
	}
	rep = runLive(t, cfg, opts)
	stopWriting()
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	out := text(rep)
	if rep.ExitCode() != verify.ExitDiffers || !strings.Contains(out, "public.marker extra id=424242") {
		t.Errorf("damage not reported as expected:\n%s", out)
	}
	for _, tr := range rep.Tables {
		if tr.Target != "public.marker" && !tr.OK() {
			t.Errorf("%s: unexpected divergence:\n%s", tr.Target, out)
		}
	}
}

// waitActivity waits until a session on conn's server matches cond, a
// condition on pg_stat_activity.
func waitActivity(t *testing.T, conn *pgx.Conn, cond string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND `+cond).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session matched %q within 30s", cond)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func runLive(t *testing.T, cfg *config.Config, opts verify.Options) *verify.Report {
	t.Helper()
	rep, err := verifyLive(cfg, opts)
	if err != nil {
		t.Fatalf("live verify could not check: %v", err)
	}
	return rep
}

// verifyLive runs verify; it does not touch testing.T, so it may run on
// any goroutine.
func verifyLive(cfg *config.Config, opts verify.Options) (*verify.Report, error) {
	ctx := context.Background()
	src, err := verify.Connect(ctx, cfg.Source.DSN)
	if err != nil {
		return nil, err
	}
	defer src.Close(ctx)
	tgt, err := verify.Connect(ctx, cfg.Target.DSN)
	if err != nil {
		return nil, err
	}
	defer tgt.Close(ctx)
	rep, err := verify.Run(ctx, cfg, src, tgt, opts, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return nil, fmt.Errorf("%w\n%s", err, text(rep))
	}
	return rep, nil
}

func text(rep *verify.Report) string {
	var b strings.Builder
	_ = rep.WriteText(&b)
	return b.String()
}
