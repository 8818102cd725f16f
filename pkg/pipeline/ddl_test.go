package pipeline_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tandem-migrate/tandem/internal/testkit"
)

// TestRelationChangesMidStream adds columns on the old database while
// streaming. A new column the new schema also has is copied from then on; a
// change that breaks the mapping (an expression's column dropped) stops
// tandem with the reason instead of writing wrong rows.
func TestRelationChangesMidStream(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	if _, err := tgt.Exec(ctx, `ALTER TABLE events_v2 ADD COLUMN priority int`); err != nil {
		t.Fatal(err)
	}
	cfg := env.Config("ddl")
	r := startConfig(t, cfg)
	testkit.WaitSlot(t, src, "ddl", time.Minute)

	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := src.Exec(ctx, sql, args...); err != nil {
			t.Fatal(err)
		}
	}
	exec(`INSERT INTO events (id, tenant_id, kind) VALUES (1, 1, 'before')`)
	exec(`ALTER TABLE events ADD COLUMN priority int`)
	exec(`INSERT INTO events (id, tenant_id, kind, priority) VALUES (2, 1, 'after', 7)`)
	exec(`UPDATE events SET priority = 3 WHERE id = 1`)
	exec(`INSERT INTO marker (id) VALUES (1)`)
	testkit.WaitMark(t, tgt, 1, time.Minute, r.alive)
	var got string
	if err := tgt.QueryRow(ctx, `SELECT string_agg(id || ':' || kind || ':' || COALESCE(priority::text, 'null'), ',' ORDER BY id) FROM events_v2`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if want := "1:before:3,2:after:7"; got != want {
		t.Fatalf("events_v2 = %s, want %s", got, want)
	}
	if n := testutil.ToFloat64(r.p.Metrics().Changes.WithLabelValues("public.events", "insert")); n != 2 {
		t.Errorf("tandem_changes_applied_total{table=public.events,op=insert} = %v, want 2", n)
	}
	if lsn := testutil.ToFloat64(r.p.Metrics().CheckpointLSN); lsn <= 0 {
		t.Errorf("tandem_checkpoint_lsn = %v", lsn)
	}

	// Dropping a column an expression needs cannot be mapped any more.
	exec(`ALTER TABLE orders DROP COLUMN status_code`)
	exec(`INSERT INTO orders (id, tenant_id) VALUES (1, 1)`)
	err, ok := r.stopped(time.Minute)
	if !ok {
		t.Fatal("tandem kept running after the source lost a column its mapping needs")
	}
	if err == nil || !strings.Contains(err.Error(), "status_code") || !strings.Contains(err.Error(), "tables[0]") {
		t.Fatalf("want a stop naming status_code and tables[0], got %v", err)
	}
	t.Logf("stopped as expected: %v", err)
	var n int
	if err := tgt.QueryRow(ctx, `SELECT count(*) FROM orders_v2`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("orders_v2 has %d rows (err %v); the unmappable insert must not be written", n, err)
	}
}
