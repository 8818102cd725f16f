package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/internal/testkit"
)

// TestFaultSlotInvalidatedWhileStopped: tandem streams a random workload
// into the new database and is stopped (SIGTERM) while the workload goes
// on; the old database, with max_slot_wal_keep_size = 1MB, then writes
// and checkpoints past the slot, which it invalidates (wal_status lost):
// the changes tandem had not read are gone. A new `tandem run` must stop
// at once, non-zero, naming the slot, PostgreSQL's reason and the fix
// (teardown and a fresh start), and must neither create another slot nor
// apply anything; `status` and `validate` must say the same. Then the fix
// it names must work: teardown, empty the new tables, run again, and the
// new database ends equal to the old one.
func TestFaultSlotInvalidatedWhileStopped(t *testing.T) {
	const slot = "gone"
	ctx := context.Background()
	env := testkit.SetupWith(t, map[string]string{"max_slot_wal_keep_size": "1MB", "max_wal_size": "32MB", "min_wal_size": "32MB"}, nil)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	installLedger(t, tgt)
	cfg := writeConfig(t, env.YAMLWithBackfill(slot, "{enabled: true}", ""))

	d := startDaemon(t, cfg)
	waitTableCopied(t, env.TargetDSN, slot, "public.marker", d.alive)
	w := startWriter(t, env.SourceDSN, 71, 0)
	time.Sleep(3 * time.Second)
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, 2*time.Minute, d.alive)
	if code, _ := d.terminate(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0", code)
	}
	stoppedAt := w.steps.Load()

	// The workload goes on without tandem, and the old database writes
	// and recycles WAL past the slot's budget.
	deadline := time.Now().Add(2 * time.Minute)
	for i := 0; slotWALStatus(t, src, slot) != "lost"; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("slot %s not invalidated within 2 minutes (wal_status %q)", slot, slotWALStatus(t, src, slot))
		}
		if _, err := src.Exec(ctx, `INSERT INTO events (id, tenant_id, kind, body) SELECT 100000 + g, 1, 'filler', repeat('w', 500)
			FROM generate_series(1, 4000) g ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body || $1`, fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
		if _, err := src.Exec(ctx, `SELECT pg_switch_wal()`); err != nil {
			t.Fatal(err)
		}
		if i%3 == 2 {
			if _, err := src.Exec(ctx, `CHECKPOINT`); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.finish(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	if err := testkit.Mark(ctx, src, 2); err != nil {
		t.Fatal(err)
	}
	t.Logf("slot invalidated; the writer made %d steps while tandem was stopped", w.steps.Load()-stoppedAt)
	// Nothing doubled before the loss.
	if n := queryInt(t, tgt, `SELECT count(*) FROM (SELECT id FROM marker_applied GROUP BY id HAVING count(*) > 1) twice`); n != 0 {
		t.Errorf("%d ledger rows applied more than once before the slot was lost", n)
	}
	before := targetSnapshot(t, tgt, slot)

	// What an operator sees: PostgreSQL's reason, the slot, the fix.
	says := func(what, out string) {
		t.Helper()
		for _, want := range []string{"replication slot " + slot + " is lost", "max_slot_wal_keep_size", "tandem teardown", "start over"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s does not say %q:\n%s", what, want, out)
			}
		}
	}
	res := tandemCmd(t, "status", "--config", cfg)
	says("tandem status", res.stdout+res.stderr)
	t.Logf("status: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	res = tandemCmd(t, "validate", "--config", cfg)
	if res.code == 0 {
		t.Errorf("validate with a lost slot exited 0\n%s%s", res.stdout, res.stderr)
	}
	says("tandem validate", res.stderr)
	t.Logf("validate: exit %d: %s", res.code, strings.TrimSpace(res.stderr))

	began := time.Now()
	d = startDaemon(t, cfg)
	select {
	case <-d.exited:
	case <-time.After(time.Minute):
		t.Fatalf("tandem run with a lost slot still runs after a minute; log tail:\n%s", tail(d.log(), 20))
	}
	took := time.Since(began)
	code := d.cmd.ProcessState.ExitCode()
	t.Logf("run stopped after %s with exit %d:\n%s", took.Round(100*time.Millisecond), code, tail(d.log(), 5))
	if code == 0 {
		t.Errorf("tandem run with a lost slot exited 0")
	}
	if took > 30*time.Second {
		t.Errorf("tandem run took %s to stop on a lost slot, want it at once", took.Round(time.Second))
	}
	says("tandem run", d.log())
	for _, never := range []string{"created replication slot", "msg=streaming", "backfill starting"} {
		if strings.Contains(d.log(), never) {
			t.Errorf("tandem run with a lost slot logged %q:\n%s", never, tail(d.log(), 20))
		}
	}
	// No new slot took the lost one's place, and the new database did not
	// move: not a row, not the checkpoint.
	if n := queryInt(t, src, `SELECT count(*) FROM pg_replication_slots`); n != 1 || slotWALStatus(t, src, slot) != "lost" {
		t.Errorf("after the refused run: %d slot(s), %s's wal_status %q; want only the lost one", n, slot, slotWALStatus(t, src, slot))
	}
	if after := targetSnapshot(t, tgt, slot); after != before {
		t.Errorf("the new database changed under a lost slot:\nbefore %s\nafter  %s", before, after)
	}

	// The fix it names: teardown, empty the new tables, a fresh start.
	res = tandemCmd(t, "teardown", "--config", cfg)
	if res.code != 0 || !strings.Contains(res.stdout, "dropped replication slot "+slot) {
		t.Fatalf("teardown of a lost slot: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	if _, err := tgt.Exec(ctx, `TRUNCATE orders_v2, events_v2, marker, marker_applied`); err != nil {
		t.Fatal(err)
	}
	d = startDaemon(t, cfg)
	testkit.WaitBackfill(t, tgt, slot, 3, 3*time.Minute, d.alive)
	if err := testkit.Mark(ctx, src, 3); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 3, 2*time.Minute, d.alive)
	testkit.Compare(t, src, tgt)
	if code, _ := d.terminate(30 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// slotWALStatus is pg_replication_slots.wal_status of slot.
func slotWALStatus(t *testing.T, src *pgx.Conn, slot string) string {
	t.Helper()
	var s string
	if err := src.QueryRow(context.Background(), `SELECT COALESCE(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&s); err != nil {
		t.Fatalf("wal_status of slot %s: %v", slot, err)
	}
	return s
}

// targetSnapshot sums up what tandem has written on the new database: its
// checkpoint and a digest of every mapped table.
func targetSnapshot(t *testing.T, tgt *pgx.Conn, name string) string {
	t.Helper()
	var s string
	err := tgt.QueryRow(context.Background(), `SELECT concat_ws(' ',
		'checkpoint', (SELECT lsn::text FROM tandem.checkpoint WHERE name = $1),
		'orders', (SELECT count(*) || ':' || coalesce(md5(string_agg(r::text, '|' ORDER BY id)), '') FROM orders_v2 r),
		'events', (SELECT count(*) || ':' || coalesce(md5(string_agg(r::text, '|' ORDER BY id)), '') FROM events_v2 r),
		'marker', (SELECT count(*) || ':' || coalesce(md5(string_agg(r::text, '|' ORDER BY id)), '') FROM marker r),
		'ledger', (SELECT count(*) FROM marker_applied))`, name).Scan(&s)
	if err != nil {
		t.Fatalf("snapshot of the new database: %v", err)
	}
	return s
}
