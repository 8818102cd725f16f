package pipeline_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tandem-migrate/tandem/internal/testkit"
)

// TestBackfillThrottleAndPause holds the copy back with a user probe on the
// old database, then with a pause through the control endpoint, and checks
// that no rows move while held and that it finishes once released.
func TestBackfillThrottleAndPause(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	w := testkit.NewWorkload(src, 5)
	if err := testkit.Seed(ctx, src, w, 40000); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Exec(ctx, `CREATE TABLE hold (on_hold boolean NOT NULL); INSERT INTO hold VALUES (true)`); err != nil {
		t.Fatal(err)
	}
	cfg := env.Config("throttle")
	on := true
	cfg.Backfill.Enabled = &on
	cfg.Backfill.ChunkRows = 500
	cfg.Backfill.RowsPerSecond = 20000
	cfg.Backfill.ThrottleQuery = "SELECT on_hold FROM hold"
	cfg.Backfill.ThrottleCheckInterval = 100 * time.Millisecond
	r := startConfig(t, cfg)
	ctl := httptest.NewServer(r.p.Backfill.Handler())
	defer ctl.Close()

	// Held by the probe: at most the chunks read before the first sample.
	time.Sleep(2 * time.Second)
	held := testkit.BackfillCopied(ctx, tgt, "public.orders")
	if held > int64(cfg.Backfill.ChunkRows*cfg.Backfill.Workers) {
		t.Fatalf("copied %d rows while throttle_query said hold", held)
	}
	if got := r.p.Backfill.Throttled(); !strings.Contains(got, "throttle_query") {
		t.Fatalf("Throttled() = %q, want the probe named", got)
	}
	if _, err := src.Exec(ctx, `UPDATE hold SET on_hold = false`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "copy resumes after the probe clears", func() bool { return testkit.BackfillCopied(ctx, tgt, "public.orders") > held+2000 })

	// Pause through the endpoint, as an operator would.
	post(t, ctl.URL+"?pause")
	time.Sleep(500 * time.Millisecond) // chunks already read may still land
	paused := testkit.BackfillCopied(ctx, tgt, "public.orders")
	time.Sleep(1500 * time.Millisecond)
	if now := testkit.BackfillCopied(ctx, tgt, "public.orders"); now != paused {
		t.Fatalf("copied %d more rows while paused", now-paused)
	}
	post(t, ctl.URL+"?resume&rows_per_second=0&chunk_rows=5000&chunk_bytes=4194304")
	if l := r.p.Backfill.Limits(); l.Paused || l.RowsPerSecond != 0 || l.ChunkRows != 5000 || l.ChunkBytes != 4194304 {
		t.Fatalf("limits after resume = %+v", l)
	}
	testkit.WaitBackfill(t, tgt, cfg.Name, 3, 2*time.Minute)
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, time.Minute)
	testkit.Compare(t, src, tgt)
}

func post(t *testing.T, url string) {
	t.Helper()
	resp, err := http.Post(url, "application/x-www-form-urlencoded", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %s", url, resp.Status)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(fmt.Sprintf("timed out waiting: %s", what))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
