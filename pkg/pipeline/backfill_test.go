package pipeline_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tandem-migrate/tandem/internal/testkit"
)

// TestBackfillUnderWrites copies pre-existing rows while a random workload
// runs, including delete-then-reinsert of the same key and updates that
// leave TOASTed values untouched. The end state must equal the transformed
// old data: nothing missing, nothing resurrected.
func TestBackfillUnderWrites(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	rows := 200000
	if testing.Short() {
		rows = 30000
	}
	w := testkit.NewWorkload(src, 3)
	if err := testkit.Seed(ctx, src, w, rows); err != nil {
		t.Fatal(err)
	}
	cfg := env.Config("bf")
	on := true
	cfg.Backfill.Enabled = &on
	cfg.Backfill.ChunkRows = 1000
	cfg.Backfill.Workers = 3
	// Slow enough that the churn overlaps every part of the copy.
	cfg.Backfill.RowsPerSecond = float64(rows / 4)
	r := startConfig(t, cfg)

	// Writes during the copy, concentrated on keys the copy has not reached
	// yet and on keys it is reading now.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	var werr error
	go func() {
		defer wg.Done()
		werr = w.Churn(ctx, testkit.Connect(t, env.SourceDSN), 9, rows, 0, stop)
	}()
	testkit.WaitBackfill(t, tgt, cfg.Name, 3, 5*time.Minute, r.alive)
	close(stop)
	wg.Wait()
	if werr != nil {
		t.Fatalf("workload: %v", werr)
	}
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, 2*time.Minute, r.alive)
	testkit.Compare(t, src, tgt)
}
