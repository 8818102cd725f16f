package pipeline_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-migrate/tandem/internal/testkit"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/pipeline"
)

func logger() *slog.Logger {
	if os.Getenv("TANDEM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// running is a pipeline started in this process for a test.
type running struct {
	p      *pipeline.Pipeline
	cancel context.CancelFunc
	done   chan error
	ended  bool
	err    error
}

func start(t *testing.T, env *testkit.Env, slot string) *running {
	t.Helper()
	return startConfig(t, env.Config(slot))
}

// startConfig runs the pipeline until the test ends; a pipeline that
// stops with an error it was not asked to is a test failure.
func startConfig(t *testing.T, cfg *config.Config) *running {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1), p: pipeline.New(cfg, logger(), prometheus.NewRegistry())}
	go func() { r.done <- r.p.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// alive fails once the pipeline has stopped on its own.
func (r *running) alive() error {
	if r.ended {
		return fmt.Errorf("pipeline stopped: %v", r.err)
	}
	select {
	case r.err = <-r.done:
		r.ended = true
		return fmt.Errorf("pipeline stopped: %v", r.err)
	default:
		return nil
	}
}

// stopped waits up to d for the pipeline to stop on its own and returns
// its error; ok is false when it is still running.
func (r *running) stopped(d time.Duration) (err error, ok bool) {
	if !r.ended {
		select {
		case r.err = <-r.done:
			r.ended = true
		case <-time.After(d):
			return nil, false
		}
	}
	return r.err, true
}

func (r *running) stop(t *testing.T) {
	r.cancel()
	if r.ended {
		return
	}
	select {
	case err := <-r.done:
		r.ended = true
		if err != nil {
			t.Errorf("pipeline stopped with error: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("pipeline did not stop within 30s")
	}
}

// TestStreamMixedWorkload drives every kind of change through the stream:
// inserts, updates leaving a TOASTed value untouched, key changes, deletes,
// filter entry and exit, TRUNCATE, rolled-back transactions, one large
// transaction, and every supported type. The new schema must equal the
// transformed old data by an independent query.
func TestStreamMixedWorkload(t *testing.T) {
	// Grouped: changes are compacted per key and applied set-based. Ordered:
	// an extra unique index makes order observable, so every change is
	// applied as its own statement. Both must end equal.
	for _, mode := range []struct{ name, targetDDL string }{
		{"grouped", ""},
		{"ordered", "CREATE UNIQUE INDEX orders_v2_id_tenant ON orders_v2 (id, tenant_id)"},
	} {
		t.Run(mode.name, func(t *testing.T) { mixedWorkload(t, mode.targetDDL) })
	}
}

func mixedWorkload(t *testing.T, targetDDL string) {
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	if targetDDL != "" {
		if _, err := tgt.Exec(ctx, targetDDL); err != nil {
			t.Fatal(err)
		}
	}
	r := start(t, env, "mixed")
	testkit.WaitSlot(t, src, "mixed", time.Minute)

	w := testkit.NewWorkload(src, 1)
	steps, big := 1500, 200000
	if testing.Short() {
		steps, big = 400, 20000
	}
	for i := 0; i < steps; i++ {
		if err := w.Step(ctx); err != nil {
			t.Fatalf("workload step %d: %v", i, err)
		}
		if i == steps/2 {
			if err := w.BigTransaction(ctx, big); err != nil {
				t.Fatalf("big transaction: %v", err)
			}
		}
	}
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, 3*time.Minute, r.alive)
	testkit.Compare(t, src, tgt)

	// Untouched TOAST values must still be there, not NULL.
	var toasted, nulls int
	if err := src.QueryRow(ctx, `SELECT count(*) FILTER (WHERE big IS NOT NULL), count(*) FILTER (WHERE big IS NULL) FROM orders`).Scan(&toasted, &nulls); err != nil {
		t.Fatal(err)
	}
	if toasted == 0 {
		t.Fatal("workload produced no TOASTed values; the test would not exercise unchanged TOAST")
	}
	r.stop(t)
}

// TestRestartEitherDatabase restarts the new database, then the old one,
// while writes continue; tandem must retry, resume from its checkpoint and
// lose nothing.
func TestRestartEitherDatabase(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	r := start(t, env, "restarts")
	testkit.WaitSlot(t, src, "restarts", time.Minute)
	w := testkit.NewWorkload(src, 2)
	for i := 0; i < 200; i++ {
		if err := w.Step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.Target.Restart(ctx); err != nil {
		t.Fatalf("restart target: %v", err)
	}
	for i := 0; i < 200; i++ {
		if err := w.Step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// The old database: our own session goes down with it.
	if err := env.Source.Restart(ctx); err != nil {
		t.Fatalf("restart source: %v", err)
	}
	src = testkit.Connect(t, env.SourceDSN)
	w.Conn = src
	for i := 0; i < 200; i++ {
		if err := w.Step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	tgt := testkit.Connect(t, env.TargetDSN)
	testkit.WaitMark(t, tgt, 1, 2*time.Minute, r.alive)
	testkit.Compare(t, src, tgt)
}

// TestStricterTargetConflict gives the new schema a unique constraint the
// old one lacks. A change that collides with another row must stop tandem
// with an error naming the row and the constraint; the row already there
// must not be overwritten or deleted.
func TestStricterTargetConflict(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	if _, err := tgt.Exec(ctx, `ALTER TABLE orders_v2 ADD CONSTRAINT orders_v2_label_key UNIQUE (label)`); err != nil {
		t.Fatal(err)
	}
	r := start(t, env, "strict")
	testkit.WaitSlot(t, src, "strict", time.Minute)
	if _, err := src.Exec(ctx, `INSERT INTO orders (id, tenant_id, label) VALUES (1, 1, 'same')`); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Exec(ctx, `INSERT INTO orders (id, tenant_id, label) VALUES (2, 1, 'same')`); err != nil {
		t.Fatal(err)
	}
	err, ok := r.stopped(time.Minute)
	if !ok {
		t.Fatal("tandem kept running past a unique conflict in the new schema")
	}
	msg := fmt.Sprint(err)
	for _, want := range []string{"id=2", "orders_v2_label_key", "never overwrites"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	var ids string
	if err := tgt.QueryRow(ctx, `SELECT COALESCE(string_agg(id::text || ':' || label, ','), '') FROM orders_v2`).Scan(&ids); err != nil {
		t.Fatal(err)
	}
	if ids != "1:same" && ids != "" {
		t.Fatalf("orders_v2 = %q: the conflicting change overwrote or removed another row", ids)
	}
}
