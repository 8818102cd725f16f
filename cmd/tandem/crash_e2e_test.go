package main

import (
	"context"
	"fmt"
	"math/rand"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/internal/testkit"
)

// TestTargetCrashAsyncCommit crashes the new database (SIGKILL of the
// postmaster, as pg_ctl -m immediate or a power cut would) several times
// while tandem copies history and while it streams, with the new database
// running synchronous_commit = off, as one being bulk-loaded often is.
// COMMIT then returns before the WAL is flushed, so a daemon that confirmed
// the slot on COMMIT would find its checkpoint behind the slot after
// recovery and could not go on. tandem must carry on by itself, the same
// process throughout, and end with every row equal and every ledger row
// applied exactly once.
func TestTargetCrashAsyncCommit(t *testing.T) {
	ctx := context.Background()
	env := testkit.SetupWith(t, nil, map[string]string{"synchronous_commit": "off"})
	src := testkit.Connect(t, env.SourceDSN)
	rows, crashes := 150000, 4
	if testing.Short() {
		rows = 60000
	}
	w := testkit.NewWorkload(src, 31)
	if err := testkit.Seed(ctx, src, w, rows); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Exec(ctx, "ANALYZE orders"); err != nil {
		t.Fatal(err)
	}
	installLedger(t, testkit.Connect(t, env.TargetDSN))
	cfg := writeConfig(t, env.YAMLWithBackfill("tgtcrash", fmt.Sprintf("{enabled: true, chunk_rows: 2000, workers: 2, rows_per_second: %d}", rows/12), ""))
	d := startDaemon(t, cfg)
	// The ledger counts every write of a marker row, and the backfill
	// rewrites the rows it copies, which the stream may have applied
	// already: ledger rows start once the (empty) marker table's copy is
	// durably done, so only the stream writes them.
	waitTableCopied(t, env.TargetDSN, "tgtcrash", "public.marker", d.alive)
	// New orders and ledger rows from one writer, random changes to the
	// seeded history (some ahead of the copy, some behind it) from another.
	wr := startWriterAt(t, env.SourceDSN, 32, 0, 10*int64(rows))
	stop := make(chan struct{})
	churned := make(chan error, 1)
	go func() { churned <- w.Churn(ctx, testkit.Connect(t, env.SourceDSN), 34, rows, 2*time.Millisecond, stop) }()

	r := rand.New(rand.NewSource(33))
	for i := 1; i <= crashes; i++ {
		time.Sleep(time.Duration(1500+r.Intn(1500)) * time.Millisecond)
		if err := d.alive(); err != nil {
			t.Fatal(err)
		}
		copied := withTarget(t, env.TargetDSN, func(c *pgx.Conn) int64 { return testkit.BackfillCopied(ctx, c, "public.orders") })
		if i <= crashes/2 && copied >= int64(rows) {
			t.Fatalf("the backfill finished before crash %d; slow it down so the new database crashes mid-copy", i)
		}
		if err := env.Target.Kill(); err != nil {
			t.Fatal(err)
		}
		t.Logf("crash #%d of the new database with %d rows copied, %d writer steps", i, copied, wr.steps.Load())
		time.Sleep(500 * time.Millisecond)
		if err := env.Target.StartAgain(ctx); err != nil {
			t.Fatal(err)
		}
		if i == crashes/2 {
			// The rest crash the stream, with the copy behind it.
			tgt := testkit.Connect(t, env.TargetDSN)
			testkit.WaitBackfill(t, tgt, "tgtcrash", 3, 3*time.Minute, d.alive)
		}
	}
	close(stop)
	if err := <-churned; err != nil {
		t.Fatal(err)
	}
	if err := wr.finish(); err != nil {
		t.Fatal(err)
	}
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	tgt := testkit.Connect(t, env.TargetDSN)
	testkit.WaitMark(t, tgt, 1, 3*time.Minute, d.alive)
	testkit.Compare(t, src, tgt)
	assertLedgerExactlyOnce(t, tgt, wr.ledger.Load())
	if err := d.alive(); err != nil {
		t.Fatal(err)
	}
}

// withTarget runs f on a fresh connection, waiting for a restarting
// server to accept one.
func withTarget[T any](t *testing.T, dsn string, f func(*pgx.Conn) T) T {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := pgx.Connect(context.Background(), dsn)
		if err == nil {
			defer c.Close(context.Background())
			return f(c)
		}
		if time.Now().After(deadline) {
			t.Fatalf("connect to %s: %v", dsn, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitTableCopied waits until one source table's backfill is committed as
// done on the new database.
func waitTableCopied(t *testing.T, dsn, name, source string, alive func() error) {
	t.Helper()
	tgt := testkit.Connect(t, dsn)
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if err := alive(); err != nil {
			t.Fatal(err)
		}
		var done bool
		err := tgt.QueryRow(context.Background(), `SELECT done FROM tandem.backfill WHERE name = $1 AND source = $2`, name, source).Scan(&done)
		if err == nil && done {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("backfill of %s not done within a minute", source)
}
