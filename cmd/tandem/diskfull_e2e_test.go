package main

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"testing"
	"time"

	"github.com/tandem-migrate/tandem/internal/testkit"
)

// TestFaultTargetDiskFull fills the new database's disk in the middle of
// the copy: the target tables live in a tablespace on a 12 MB tmpfs, too
// small for the history, while a writer keeps streaming changes. Every
// COPY and insert that needs a new page then fails with SQLSTATE 53100
// ("could not extend file ...: No space left on device"). tandem must keep
// retrying (the same process, never exiting), say in its log that the disk
// is full, let the lag grow, and finish by itself once the file system is
// grown; then every row must be equal by an independent comparison and
// every ledger row applied exactly once.
func TestFaultTargetDiskFull(t *testing.T) {
	const slot = "diskfull"
	ctx := context.Background()
	// Before the clusters: unmounted after they are destroyed.
	fs := testkit.MountTmpfs(t, "12m")
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	rows := 100000
	w := testkit.NewWorkload(src, 61)
	if err := testkit.Seed(ctx, src, w, rows); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Exec(ctx, "ANALYZE orders"); err != nil {
		t.Fatal(err)
	}
	// The mapped tables (the marker table, which tandem's ledger check
	// watches, stays on the big disk) and their keys go to the small disk.
	if _, err := tgt.Exec(ctx, fmt.Sprintf(`CREATE TABLESPACE small LOCATION '%s'`, fs.Dir)); err != nil {
		t.Fatal(err)
	}
	if _, err := tgt.Exec(ctx, `ALTER TABLE orders_v2 SET TABLESPACE small; ALTER INDEX orders_v2_pkey SET TABLESPACE small;
		ALTER TABLE events_v2 SET TABLESPACE small; ALTER INDEX events_v2_pkey SET TABLESPACE small`); err != nil {
		t.Fatal(err)
	}
	installLedger(t, tgt)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", closedPort(t))
	cfg := writeConfig(t, env.YAMLWithBackfill(slot, "{enabled: true, chunk_rows: 2000, workers: 2}", fmt.Sprintf("metrics: {listen: %q}\n", metricsAddr)))

	d := startDaemon(t, cfg)
	waitTableCopied(t, env.TargetDSN, slot, "public.marker", d.alive)
	wr := startWriterAt(t, env.SourceDSN, 62, 0, 10*int64(rows))

	// The disk fills: the first refusal, then more of them from the same
	// process, retrying.
	full := regexp.MustCompile(`msg="stream interrupted; resuming from checkpoint".*No space left on device`)
	first := waitLog(t, d, full, 2*time.Minute)
	t.Logf("disk full, with %d/%d rows copied: %s", testkit.BackfillCopied(ctx, tgt, "public.orders"), rows, first[0])
	fullSince := time.Now()
	var lagSeconds, lagBytes float64
	// Each retry connects, plans and starts the stream again before its
	// first write fails, so tandem_streaming and readiness may show 1 and
	// 200 for a moment: counted and logged, not asserted.
	var samples, streaming, ready int
	for time.Since(fullSince) < 15*time.Second || len(full.FindAllString(d.log(), -1)) < 3 {
		if err := d.alive(); err != nil {
			t.Fatalf("tandem stopped on a full disk instead of retrying: %v", err)
		}
		if err := writerFailed(wr); err != nil {
			t.Fatal(err)
		}
		if time.Since(fullSince) > 2*time.Minute {
			t.Fatalf("only %d refusals logged in 2 minutes of full disk; log tail:\n%s", len(full.FindAllString(d.log(), -1)), tail(d.log(), 20))
		}
		m := scrape(t, metricsAddr)
		lagSeconds, lagBytes = max(lagSeconds, m["tandem_replication_lag_seconds"]), max(lagBytes, m["tandem_replication_lag_bytes"])
		samples++
		if m["tandem_streaming"] == 1 {
			streaming++
		}
		if probe(t, metricsAddr, "/healthz") == http.StatusOK {
			ready++
		}
		if code := probe(t, metricsAddr, "/livez"); code != http.StatusOK {
			t.Errorf("full disk: /livez %d, want 200 (retrying by itself is alive)", code)
		}
		time.Sleep(time.Second)
	}
	copied := testkit.BackfillCopied(ctx, tgt, "public.orders")
	if copied >= int64(rows) {
		t.Fatalf("the backfill finished (%d rows) on a full disk", copied)
	}
	if lagSeconds < 5 || lagBytes <= 0 {
		t.Errorf("%s of full disk under writes: lag peaked at %.1f s and %.0f bytes; want it growing", time.Since(fullSince).Round(time.Second), lagSeconds, lagBytes)
	}
	logged := d.log()
	retries := map[string]int{}
	for _, m := range regexp.MustCompile(`msg="stream interrupted; resuming from checkpoint".* retry_in=(\S+)`).FindAllStringSubmatch(logged, -1) {
		retries[m[1]]++
	}
	t.Logf("%s of full disk: %d refusals retried (retry_in: %v), %d/%d rows copied, lag peaked at %.1f s and %.0f bytes, %d writer steps; tandem_streaming 1 in %d of %d samples, /healthz 200 in %d",
		time.Since(fullSince).Round(time.Second), len(full.FindAllString(logged, -1)), retries, copied, rows, lagSeconds, lagBytes, wr.steps.Load(), streaming, samples, ready)

	// Space comes back: tandem finishes by itself.
	fs.Resize("400m")
	freed := time.Now()
	testkit.WaitBackfill(t, tgt, slot, 3, 3*time.Minute, d.alive)
	t.Logf("space freed: backfill done %s later", time.Since(freed).Round(100*time.Millisecond))
	if err := wr.finish(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, 3*time.Minute, d.alive)
	t.Logf("caught up %s after space was freed", time.Since(freed).Round(100*time.Millisecond))
	testkit.Compare(t, src, tgt)
	assertLedgerExactlyOnce(t, tgt, wr.ledger.Load())
	if code, _ := d.terminate(30 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// writerFailed is the writer's error once it has stopped by itself, nil
// while it runs.
func writerFailed(w *writer) error {
	select {
	case err := <-w.done:
		w.done <- err // later callers see the same result
		if err == nil {
			return fmt.Errorf("the writer stopped after %d steps", w.steps.Load())
		}
		return fmt.Errorf("writer: %w", err)
	default:
		return nil
	}
}
