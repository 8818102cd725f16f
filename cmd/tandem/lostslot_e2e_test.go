package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/internal/testkit"
)

// TestLostSlot: the old database invalidates the slot (it fell behind
// max_slot_wal_keep_size while tandem was stopped). status and validate
// warn while it is only unreserved; once it is lost, status, validate and
// run all say so with PostgreSQL's reason and the fix, run stops, and
// nothing is applied past the gap.
func TestLostSlot(t *testing.T) {
	const slot = "lost"
	ctx := context.Background()
	env := testkit.SetupWith(t, map[string]string{"max_slot_wal_keep_size": "1MB"}, nil)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	cfg := writeConfig(t, env.YAML(slot, ""))

	d := startDaemon(t, cfg)
	waitStreaming(t, src, slot)
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, time.Minute, d.alive)
	if code, _ := d.terminate(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}

	// WAL the stopped tandem has not confirmed, beyond the budget.
	if err := testkit.Mark(ctx, src, 2); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := src.Exec(ctx, `INSERT INTO events (id, tenant_id, kind) SELECT g, 1, repeat('x', 100) FROM generate_series($1::int, $1::int + 999) g`, 1000*i+1); err != nil {
			t.Fatal(err)
		}
		if _, err := src.Exec(ctx, `SELECT pg_switch_wal()`); err != nil {
			t.Fatal(err)
		}
	}
	if got := walStatus(t, src, slot); got != "unreserved" {
		t.Fatalf("wal_status %q before the checkpoint, want unreserved", got)
	}
	res := tandemCmd(t, "status", "--config", cfg)
	if res.code != 0 || !strings.Contains(res.stdout, "unreserved") || !strings.Contains(res.stdout, "max_slot_wal_keep_size") {
		t.Errorf("status of an unreserved slot: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	res = tandemCmd(t, "validate", "--config", cfg)
	if res.code != 0 || !strings.Contains(res.stdout, "WARNING: replication slot lost is unreserved") {
		t.Errorf("validate of an unreserved slot: exit %d, want 0 and a warning\n%s%s", res.code, res.stdout, res.stderr)
	}

	if _, err := src.Exec(ctx, `CHECKPOINT`); err != nil {
		t.Fatal(err)
	}
	if got := walStatus(t, src, slot); got != "lost" {
		t.Fatalf("wal_status %q after the checkpoint, want lost", got)
	}
	fix := []string{"replication slot lost is lost", "tandem teardown", "start over"}
	res = tandemCmd(t, "status", "--config", cfg)
	if !strings.Contains(res.stdout, "LOST") {
		t.Errorf("status of a lost slot does not say LOST:\n%s%s", res.stdout, res.stderr)
	}
	for _, want := range fix {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("status of a lost slot lacks %q:\n%s", want, res.stdout)
		}
	}
	for _, sub := range []string{"validate", "run"} {
		began := time.Now()
		res = tandemCmd(t, sub, "--config", cfg)
		if res.code == 0 {
			t.Errorf("%s with a lost slot exited 0\n%s%s", sub, res.stdout, res.stderr)
		}
		for _, want := range append([]string{"source.slot"}, fix...) {
			if !strings.Contains(res.stderr, want) {
				t.Errorf("%s with a lost slot: stderr lacks %q:\n%s", sub, want, res.stderr)
			}
		}
		t.Logf("%s refused after %s: %s", sub, time.Since(began).Round(100*time.Millisecond), strings.TrimSpace(res.stderr))
	}
	// Nothing applied past the gap, and the slot was not replaced by a
	// fresh one that would skip it.
	if n := queryInt(t, tgt, `SELECT count(*) FROM marker WHERE id = 2`); n != 0 {
		t.Error("a change from after the gap was applied")
	}
	if got := walStatus(t, src, slot); got != "lost" {
		t.Errorf("slot's wal_status %q after the refused run, want it left lost", got)
	}

	// The fix works: teardown drops the lost slot.
	res = tandemCmd(t, "teardown", "--config", cfg)
	if res.code != 0 || !strings.Contains(res.stdout, "dropped replication slot "+slot) {
		t.Errorf("teardown of a lost slot: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
}

func walStatus(t *testing.T, src *pgx.Conn, slot string) string {
	t.Helper()
	var s string
	if err := src.QueryRow(context.Background(), `SELECT COALESCE(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&s); err != nil {
		t.Fatalf("wal_status of %s: %v", slot, err)
	}
	return s
}
