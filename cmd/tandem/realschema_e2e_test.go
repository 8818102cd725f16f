package main

import (
	"context"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
	"github.com/tandem-migrate/tandem/internal/testkit"
)

// TestRealSchema migrates a realistic schema (testkit/realschema.go: 16
// tables with foreign keys on both sides, a payment table partitioned by
// month on the old side and plain on the new, triggers on both sides,
// domains, an enum relabelled, arrays, a tsvector, identity and generated
// columns, a filtered QA tenant) while a random workload runs and tandem
// is kill -9ed during the backfill and during the stream, with a partition
// attached mid-stream. The end state must equal the transformed old data by
// hand-written SQL, no ordinary trigger may have fired on the new side, and
// `tandem verify` must agree.
func TestRealSchema(t *testing.T) {
	const slot = "realschema"
	ctx := context.Background()
	started := time.Now()

	srcCluster := pgcluster.ForTest(t, pgcluster.Options{Name: "old"})
	tgtCluster := pgcluster.ForTest(t, pgcluster.Options{Name: "new"})
	srcDSN, tgtDSN := srcCluster.DSN("postgres"), tgtCluster.DSN("postgres")
	for _, step := range []struct {
		c    *pgcluster.Cluster
		what string
		sql  string
	}{
		{srcCluster, "source schema", testkit.RealSourceSchema},
		{srcCluster, "source seed", testkit.RealSeed},
		{srcCluster, "source constraints", testkit.RealSourceConstraints},
		{tgtCluster, "target schema", testkit.RealTargetSchema},
	} {
		if err := step.c.Exec(ctx, "postgres", step.sql); err != nil {
			t.Fatalf("%s: %v", step.what, err)
		}
	}
	src := testkit.Connect(t, srcDSN)
	tgt := testkit.Connect(t, tgtDSN)
	t.Logf("clusters up, schemas loaded and history seeded in %s", time.Since(started).Round(time.Millisecond))

	// Slow enough for several kills to land mid-copy (about 60,000 rows).
	yaml := testkit.RealYAML(srcDSN, tgtDSN, slot, "{enabled: true, chunk_rows: 500, workers: 2, rows_per_second: 4000}")
	// The new schema turns customer.active (0, 1 or 2) into a boolean:
	// no inverse can bring the 2s back, and validate's round trip must
	// say which rows would change on a rollback.
	res := tandemCmd(t, "validate", "--config", writeConfig(t, yaml))
	for _, want := range []string{"round trip public.customer -> public.customer -> back", "do not come back: active in", "customer_id=1 active: 2 -> 1"} {
		if res.code != 1 || !strings.Contains(res.stderr, want) {
			t.Fatalf("validate with a lossy inverse: exit %d, want 1 naming %q\nstdout: %s\nstderr: %s", res.code, want, res.stdout, res.stderr)
		}
	}
	if !strings.Contains(res.stdout, "round trip public.film -> public.film -> back") || !strings.Contains(res.stdout, "come back whole") {
		t.Fatalf("validate did not prove the exact inverses:\n%s", res.stdout)
	}
	// From here the migration is declared one-way.
	cfg := writeConfig(t, strings.Replace(yaml, "tables:\n", "reverse: {enabled: false}\ntables:\n", 1))
	if res := tandemCmd(t, "validate", "--config", cfg); res.code != 0 {
		t.Fatalf("validate: exit %d\nstdout: %s\nstderr: %s", res.code, res.stdout, res.stderr)
	}

	// The application, from the start of the copy to the end. The
	// partition is attached between two of its transactions, by its own
	// session: ATTACH PARTITION locks the tables payment references, so run
	// concurrently with the writer it can deadlock with it.
	w := testkit.NewRealWorkload(testkit.Connect(t, srcDSN), 42)
	stop := make(chan struct{})
	werr := make(chan error, 1)
	attach := make(chan chan error)
	var steps atomic.Int64
	go func() {
		werr <- func() error {
			for {
				select {
				case <-stop:
					return nil
				case reply := <-attach:
					err := testkit.AttachNewPartition(ctx, w.Conn)
					if err == nil {
						w.NewPartition.Store(true)
					}
					reply <- err
				default:
				}
				if err := w.Step(ctx); err != nil {
					return fmt.Errorf("workload step %d: %w", steps.Load(), err)
				}
				steps.Add(1)
				time.Sleep(time.Millisecond)
			}
		}()
	}()
	stopWriter := func() error {
		select {
		case <-stop:
		default:
			close(stop)
		}
		err := <-werr
		werr <- err
		return err
	}
	// writerOK fails the test at once if the writer has stopped on an error.
	writerOK := func() {
		t.Helper()
		select {
		case err := <-werr:
			werr <- err
			t.Fatalf("writer stopped: %v", err)
		default:
		}
	}
	t.Cleanup(func() { _ = stopWriter() })

	seed := time.Now().UnixNano()
	t.Logf("kill schedule seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	pause := func() { time.Sleep(time.Duration(300+rng.Intn(900)) * time.Millisecond) }
	backfillState := func() (done, total int64) {
		_ = tgt.QueryRow(ctx, `SELECT count(*) FILTER (WHERE done), count(*) FROM tandem.backfill WHERE name = $1`, slot).Scan(&done, &total)
		return done, total
	}

	// Kills during the copy, spread over it by the rows it has durably
	// copied: the n-th when about n/7 of the rows are in, plus a random
	// delay.
	var expected int64
	for _, c := range testkit.RealComparisons {
		expected += queryInt(t, src, "SELECT count(*) FROM ("+c.Source+") q")
	}
	d := startDaemon(t, cfg)
	backfillKills := 0
	for i := int64(1); i <= 5; i++ {
		deadline := time.Now().Add(2 * time.Minute)
		for queryIntOr0(tgt, `SELECT COALESCE(sum(rows_copied), 0)::int8 FROM tandem.backfill WHERE name = $1`, slot) < expected*i/7 {
			if err := d.alive(); err != nil {
				t.Fatal(err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("the backfill made no progress towards %d rows in 2 minutes", expected*i/7)
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(time.Duration(rng.Intn(300)) * time.Millisecond)
		done, total := backfillState()
		if done == testkit.RealTables {
			break
		}
		copied := queryIntOr0(tgt, `SELECT COALESCE(sum(rows_copied), 0)::int8 FROM tandem.backfill WHERE name = $1`, slot)
		writerOK()
		d.kill()
		backfillKills++
		t.Logf("kill -9 #%d during the backfill: %d/%d tables done, %d of %d rows copied, %d workload transactions", backfillKills, done, total, copied, expected, steps.Load())
		d = startDaemon(t, cfg)
	}
	if backfillKills < 4 {
		t.Fatalf("the backfill finished after only %d kills; slow it down so it is attacked at least 4 times", backfillKills)
	}
	testkit.WaitBackfill(t, tgt, slot, testkit.RealTables, 3*time.Minute, d.alive)
	t.Logf("backfill done at %s", time.Since(started).Round(time.Millisecond))

	// Kills during the stream, with a partition attached mid-stream and
	// written to.
	streamKills := 0
	for streamKills < 4 {
		pause()
		if streamKills == 1 {
			reply := make(chan error, 1)
			select {
			case attach <- reply:
			case <-time.After(time.Minute):
				writerOK()
				t.Fatal("the writer did not take the attach request within a minute")
			}
			if err := <-reply; err != nil {
				t.Fatalf("attach partition: %v", err)
			}
			t.Logf("attached %s; the workload now writes into it", testkit.RealNewPartition)
			pause()
		}
		if err := d.alive(); err != nil {
			t.Fatal(err)
		}
		writerOK()
		d.kill()
		streamKills++
		t.Logf("kill -9 #%d during the stream, %d workload transactions", backfillKills+streamKills, steps.Load())
		d = startDaemon(t, cfg)
	}
	// The workload must have done what the assertions below are about;
	// give it until it has (the rarer kinds, in the new partition, have
	// only had a few seconds).
	required := []string{
		"payment insert", "payment moved across partitions", "payment delete", "transaction deleting from several partitions",
		"payment insert into the new partition", "payment moved into the new partition", "payment update in the new partition",
		"payment moved out of the new partition", "payment delete from the new partition",
		"customer enters the filter", "customer leaves the filter", "QA customer insert", "customer delete",
		"film update", "film insert", "film delete", "rental delete", "staff insert", "store update",
	}
	time.Sleep(time.Second)
	for deadline := time.Now().Add(30 * time.Second); len(w.Missing(required...)) > 0 && time.Now().Before(deadline); {
		writerOK()
		time.Sleep(100 * time.Millisecond)
	}
	if err := stopWriter(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	counts := w.Counts()
	var kinds []string
	for k, n := range counts {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(kinds)
	t.Logf("%d workload transactions: %s", steps.Load(), strings.Join(kinds, ", "))
	if missing := w.Missing(required...); len(missing) > 0 {
		t.Fatalf("the workload never committed %q; the run would prove nothing about it", missing)
	}

	// Everything committed before the marker is on the new side once it is.
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, 2*time.Minute, d.alive)
	t.Logf("caught up at %s", time.Since(started).Round(time.Millisecond))

	var parts, inNew int64
	if err := src.QueryRow(ctx, `SELECT count(DISTINCT tableoid), count(*) FILTER (WHERE tableoid = $1::regclass) FROM payment`, testkit.RealNewPartition).Scan(&parts, &inNew); err != nil {
		t.Fatal(err)
	}
	if parts < 19 || inNew == 0 {
		t.Errorf("payments span %d partitions with %d rows in %s; want all 19 partitions in use", parts, inNew, testkit.RealNewPartition)
	}

	testkit.CompareReal(t, src, tgt)

	// No ordinary trigger may have fired for a replicated row on the new
	// side; the ENABLE ALWAYS one must have.
	rows, err := tgt.Query(ctx, `SELECT tbl || ' ' || op || ' x' || count(*) FROM tripwire GROUP BY tbl, op ORDER BY tbl, op`)
	if err != nil {
		t.Fatal(err)
	}
	fired, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(fired) > 0 {
		t.Errorf("ordinary triggers fired on the new database for replicated rows: %s", strings.Join(fired, ", "))
	}
	if n := queryInt(t, tgt, `SELECT count(*) FROM film_audit`); n == 0 {
		t.Errorf("the ENABLE ALWAYS trigger on film never fired; it must fire for replicated rows")
	}

	res = tandemCmd(t, "verify", "--config", cfg)
	if res.code != 0 {
		t.Errorf("tandem verify: exit %d, want 0\nstdout: %s\nstderr: %s", res.code, tail(res.stdout, 40), tail(res.stderr, 10))
	}
	if t.Failed() {
		t.FailNow()
	}
	if code, _ := d.terminate(30 * time.Second); code != 0 {
		t.Errorf("tandem run exited %d after SIGTERM, want 0", code)
	}
	t.Logf("%d kills (%d in the backfill, %d in the stream); all %d tables equal; verify OK; %s in all",
		backfillKills+streamKills, backfillKills, streamKills, testkit.RealTables, time.Since(started).Round(time.Millisecond))
}

// queryIntOr0 reads one number, or 0 if the query fails (before tandem
// created its schema).
func queryIntOr0(conn *pgx.Conn, sql string, args ...any) int64 {
	var n int64
	_ = conn.QueryRow(context.Background(), sql, args...).Scan(&n)
	return n
}
