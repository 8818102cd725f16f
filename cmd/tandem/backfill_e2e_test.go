package main

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/internal/testkit"
	"github.com/tandem-migrate/tandem/pkg/backfill"
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

	d, _ := killLoop(t, cfg, tgt, "public.orders", int64(rows), kills, 13, 300, 1200)
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
		CREATE TRIGGER count_write BEFORE INSERT OR UPDATE ON orders_v2 FOR EACH ROW EXECUTE FUNCTION count_write();
		ALTER TABLE orders_v2 ENABLE ALWAYS TRIGGER count_write; -- tandem applies as a replica`); err != nil {
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

// TestBackfillKillLoopBinary attacks the binary path the same way: a
// pure-copy table of built-in types, whose chunks travel as ready COPY
// bodies, copied under random deletes, updates and delete-then-reinserts
// of the same key, with tandem kill -9ed mid-copy again and again. Every
// row must end as on the old database, by an independent comparison.
func TestBackfillKillLoopBinary(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	rows, kills := 300000, 6
	if testing.Short() {
		rows, kills = 60000, 3
	}
	ddl := `CREATE TABLE items (id bigint PRIMARY KEY, sku text NOT NULL, price numeric(12,2), tags int[], at timestamptz, attrs jsonb)`
	for _, c := range []*pgx.Conn{src, tgt} {
		if _, err := c.Exec(ctx, ddl); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := src.Exec(ctx, `INSERT INTO items SELECT g, 'SKU-' || g, CASE WHEN g % 9 = 0 THEN NULL ELSE g / 7.0 END, ARRAY[g % 5, g % 7],
		'2024-01-01'::timestamptz + g * interval '1 s', jsonb_build_object('g', g) FROM generate_series(1, $1::int) g`, rows); err != nil {
		t.Fatal(err)
	}
	rate := rows / 10
	cfg := writeConfig(t, fmt.Sprintf(`source: {dsn: %q, slot: bfbin, publication: bfbin}
target: {dsn: %q}
backfill: {enabled: true, chunk_rows: 3000, workers: 2, rows_per_second: %d}
apply: {retry_min: 100ms, retry_max: 1s}
tables:
  - source: public.items
  - source: public.marker
`, env.SourceDSN, env.TargetDSN, rate))

	stop := make(chan struct{})
	werr := make(chan error, 1)
	conn := testkit.Connect(t, env.SourceDSN)
	go func() {
		werr <- testkit.ChurnByKey(ctx, conn, 17, int64(rows)+1000, []string{ // some inserts past the end
			`DELETE FROM items WHERE id = $1`,
			`UPDATE items SET price = price + 1, tags = tags || 0, attrs = attrs || '{"u": 1}' WHERE id = $1`,
			`WITH d AS (DELETE FROM items WHERE id = $1) INSERT INTO items (id, sku, at) VALUES ($1, 'again', now()) ON CONFLICT (id) DO NOTHING`,
			`WITH d AS (DELETE FROM items WHERE id = $1) INSERT INTO items (id, sku, at) VALUES ($1, 'again', now()) ON CONFLICT (id) DO NOTHING`,
		}, time.Millisecond, stop)
	}()

	d, killed := killLoop(t, cfg, tgt, "public.items", int64(rows)*9/10, kills, 19, 300, 900)
	testkit.WaitBackfill(t, tgt, "bfbin", 2, 5*time.Minute, d.alive)
	close(stop)
	if err := <-werr; err != nil {
		t.Fatalf("workload: %v", err)
	}
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, 3*time.Minute, d.alive)
	testkit.SameTable(t, src, tgt, "items", "id")
	if !strings.Contains(d.log(), `format=binary`) {
		t.Fatalf("the copy did not take the binary path:\n%s", d.log())
	}
	t.Logf("items equal after %d kills", killed)
}

// killLoop starts tandem on cfg and kill -9s it after random pauses of
// minMS to minMS+spreadMS until it was killed kills times, restarting it
// each time. It fails the test if table's durable progress reaches done
// rows first (the copy was too fast to attack), and returns the running
// daemon and the number of kills.
func killLoop(t *testing.T, cfg string, tgt *pgx.Conn, table string, done int64, kills int, seed int64, minMS, spreadMS int) (*daemon, int) {
	t.Helper()
	d := startDaemon(t, cfg)
	r := rand.New(rand.NewSource(seed))
	killed := 0
	for killed < kills {
		time.Sleep(time.Duration(minMS+r.Intn(spreadMS)) * time.Millisecond)
		if err := d.alive(); err != nil {
			t.Fatal(err)
		}
		copied := testkit.BackfillCopied(context.Background(), tgt, table)
		if copied >= done {
			break
		}
		d.kill()
		killed++
		t.Logf("kill -9 #%d with %d rows of %s durably copied", killed, copied, table)
		d = startDaemon(t, cfg)
	}
	if killed < kills {
		t.Fatalf("the copy of %s got to %d rows after only %d kills; slow it down so the test attacks it %d times", table, done, killed, kills)
	}
	return d, killed
}

// TestReloadLimits: SIGHUP re-reads the config file and applies the new
// backfill limits to the running copy, keeping a pause set through the
// control socket (`tandem backfill pause`); a config that no longer loads
// is refused and the running limits stay.
func TestReloadLimits(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	w := testkit.NewWorkload(src, 21)
	if err := testkit.Seed(ctx, src, w, 20000); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "reload.sock")
	yaml := func(rate int, chunkBytes int) string {
		return env.YAMLWithBackfill("reload", fmt.Sprintf("{enabled: true, chunk_rows: 500, chunk_bytes: %d, rows_per_second: %d}", chunkBytes, rate),
			fmt.Sprintf("control: {socket: %q}\n", sock))
	}
	cfg := writeConfig(t, yaml(1000, 1<<20))
	d := startDaemon(t, cfg)
	limits := func() backfill.Limits { t.Helper(); return controlState(t, d, sock).Limits }
	if l := limits(); l.RowsPerSecond != 1000 || l.ChunkBytes != 1<<20 {
		t.Fatalf("limits at start = %+v", l)
	}
	if r := tandemCmd(t, "backfill", "pause", "--config", cfg); r.code != 0 || !strings.Contains(r.stdout, "held back: paused") {
		t.Fatalf("tandem backfill pause: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	if err := os.WriteFile(cfg, []byte(yaml(2500, 1<<22)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, d, regexp.MustCompile("config reloaded"), 30*time.Second)
	if l := limits(); l.RowsPerSecond != 2500 || l.ChunkBytes != 1<<22 || !l.Paused {
		t.Fatalf("limits after reload = %+v, want 2500 rows/s, 4 MiB chunks, still paused", l)
	}

	if err := os.WriteFile(cfg, []byte("source: [not, a, map\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, d, regexp.MustCompile("config reload failed"), 30*time.Second)
	if l := limits(); l.RowsPerSecond != 2500 || l.ChunkBytes != 1<<22 {
		t.Fatalf("limits after a failed reload = %+v, want them kept", l)
	}
	if err := d.alive(); err != nil {
		t.Fatal(err)
	}
}
