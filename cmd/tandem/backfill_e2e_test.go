package main

import (
	"context"
	"fmt"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/tandem-migrate/tandem/internal/testkit"
)

// TestBackfillKillLoop kill -9s tandem again and again while it copies a
// large table under a random workload (inserts, updates, deletes, and
// delete-then-reinsert of the same key). The end state must equal the
// transformed old data by an independent query: no missing row and no
// resurrected one.
func TestBackfillKillLoop(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	rows, kills := 1000000, 10
	if testing.Short() {
		rows, kills = 60000, 3
	}
	w := testkit.NewWorkload(src, 11)
	if err := testkit.Seed(ctx, src, w, rows); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Exec(ctx, "ANALYZE orders"); err != nil {
		t.Fatal(err)
	}
	// Slow enough that the kills land mid-copy, fast enough for CI.
	rate := rows / 12
	cfg := writeConfig(t, env.YAMLWithBackfill("bfkill", fmt.Sprintf("{enabled: true, chunk_rows: 2000, workers: 2, rows_per_second: %d}", rate), ""))

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		werr = w.Churn(ctx, testkit.Connect(t, env.SourceDSN), 12, rows, time.Millisecond, stop)
	}()

	d := startDaemon(t, cfg)
	r := rand.New(rand.NewSource(13))
	killed := 0
	for killed < kills {
		time.Sleep(time.Duration(300+r.Intn(1200)) * time.Millisecond)
		if err := d.alive(); err != nil {
			t.Fatal(err)
		}
		copied := testkit.BackfillCopied(ctx, tgt, "public.orders")
		if copied >= int64(rows) {
			break
		}
		d.kill()
		killed++
		t.Logf("kill -9 #%d with %d/%d rows durably copied", killed, copied, rows)
		d = startDaemon(t, cfg)
	}
	if killed < kills {
		t.Fatalf("backfill finished after only %d kills; slow it down so the test attacks it %d times", killed, kills)
	}
	testkit.WaitBackfill(t, tgt, "bfkill", 3, 10*time.Minute, d.alive)
	close(stop)
	wg.Wait()
	if werr != nil {
		t.Fatalf("workload: %v", werr)
	}
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, 3*time.Minute, d.alive)
	testkit.Compare(t, src, tgt)
}

// TestBackfillResumesNotRestarts kills tandem once half the table is copied
// and counts, with a sequence (which a rollback does not undo) bumped by a
// trigger on the target, every row the backfill writes in both runs: at
// most one chunk per worker may be written again.
func TestBackfillResumesNotRestarts(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	rows, chunk, workers := 100000, 1000, 2
	if testing.Short() {
		rows = 30000
	}
	w := testkit.NewWorkload(src, 21)
	if err := testkit.Seed(ctx, src, w, rows); err != nil {
		t.Fatal(err)
	}
	if _, err := tgt.Exec(ctx, `
		CREATE SEQUENCE orders_writes;
		CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN PERFORM nextval('orders_writes'); RETURN NEW; END $$;
		CREATE TRIGGER count_write BEFORE INSERT OR UPDATE ON orders_v2 FOR EACH ROW EXECUTE FUNCTION count_write();`); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, env.YAMLWithBackfill("bfresume", fmt.Sprintf("{enabled: true, chunk_rows: %d, workers: %d, rows_per_second: %d}", chunk, workers, rows/6), ""))
	d := startDaemon(t, cfg)
	deadline := time.Now().Add(2 * time.Minute)
	for testkit.BackfillCopied(ctx, tgt, "public.orders") < int64(rows/2) {
		if err := d.alive(); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("backfill did not reach half the table in 2 minutes")
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.kill()
	half := testkit.BackfillCopied(ctx, tgt, "public.orders")
	if half >= int64(rows) {
		t.Fatalf("backfill finished before the kill (%d rows); nothing to resume", half)
	}
	d = startDaemon(t, cfg)
	testkit.WaitBackfill(t, tgt, "bfresume", 3, 5*time.Minute, d.alive)

	var writes int64
	if err := tgt.QueryRow(ctx, `SELECT last_value FROM orders_writes`).Scan(&writes); err != nil {
		t.Fatal(err)
	}
	again := writes - int64(rows)
	t.Logf("killed at %d/%d rows; rows written in both runs %d, written again %d (limit %d)", half, rows, writes, again, chunk*workers)
	if again < 0 {
		t.Fatalf("fewer writes (%d) than rows (%d): the count is broken", writes, rows)
	}
	if again > int64(chunk*workers) {
		t.Fatalf("restart wrote %d rows again, more than one chunk per worker (%d)", again, chunk*workers)
	}
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, time.Minute, d.alive)
	testkit.Compare(t, src, tgt)
}
