package main

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/internal/testkit"
)

// TestCutoverGates runs `tandem cutover --dry-run` (and a real cutover)
// on setups that must not be cut over: nobody streaming and no verify
// pass, a stream that lags, a verify pass that found a difference. Each
// exits 1 naming the failed gate and changes nothing: no fence, no ended
// session, no phase, no reverse slot, no sequence moved. A healthy setup
// then passes the dry run, still changing nothing.
func TestCutoverGates(t *testing.T) {
	ctx := context.Background()
	env := testkit.SetupLife(t, 50, 500)
	cfg := writeConfig(t, env.YAML("gates", `backfill: {enabled: true}
cutover: {max_lag: 1s}
`))
	// An application session that a fence would end.
	app := testkit.Connect(t, env.OldDSN)
	before := snapshotCutover(t, env)
	expectGateFailure := func(name string, args []string, gates ...string) {
		t.Helper()
		res := tandemCmd(t, append(args, "--config", cfg)...)
		if res.code != 1 {
			t.Fatalf("%s: exit %d, want 1\n%s%s", name, res.code, res.stdout, res.stderr)
		}
		for _, g := range gates {
			if !strings.Contains(res.stdout, "FAIL "+g) {
				t.Errorf("%s: gate %q not reported as failed:\n%s", name, g, res.stdout)
			}
		}
		if got := snapshotCutover(t, env); got != before {
			t.Fatalf("%s changed something:\nbefore %s\nafter  %s", name, before, got)
		}
		if err := app.Ping(ctx); err != nil {
			t.Fatalf("%s ended an application session: %v", name, err)
		}
	}

	expectGateFailure("no daemon", []string{"cutover", "--dry-run"}, "tandem run is streaming", "lag under cutover.max_lag", "last verify pass")

	d := startDaemon(t, cfg)
	testkit.WaitBackfill(t, testkit.Connect(t, env.NewDSN), "gates", 3, 2*time.Minute, d.alive)
	if res := tandemCmd(t, "verify", "--config", cfg); res.code != 0 {
		t.Fatalf("verify: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}

	before = snapshotCutover(t, env) // now with the daemon's slot
	// A lagging stream: the daemon is frozen, its slot still held.
	if err := d.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	expectGateFailure("lagging", []string{"cutover", "--dry-run"}, "lag under cutover.max_lag")
	if err := d.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}

	// A diverged copy: a row changed on the new database behind tandem's
	// back, found by verify.
	newConn := testkit.Connect(t, env.NewDSN)
	if _, err := newConn.Exec(ctx, `UPDATE customers SET full_name = 'tampered' WHERE id = 7`); err != nil {
		t.Fatal(err)
	}
	if res := tandemCmd(t, "verify", "--config", cfg); res.code != 1 {
		t.Fatalf("verify of a tampered copy: exit %d, want 1\n%s", res.code, res.stdout)
	}
	before = snapshotCutover(t, env)
	expectGateFailure("diverged (dry run)", []string{"cutover", "--dry-run"}, "last verify pass")
	expectGateFailure("diverged", []string{"cutover"}, "last verify pass")

	// Healthy again: the old row rewritten, verified clean.
	if _, err := testkit.Connect(t, env.OldDSN).Exec(ctx, `UPDATE customers SET email = email WHERE id = 7`); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for tandemCmd(t, "verify", "--config", cfg).code != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the rewritten row never reached the new database")
		}
		time.Sleep(200 * time.Millisecond)
	}
	res := tandemCmd(t, "cutover", "--dry-run", "--config", cfg)
	if res.code != 0 || !strings.Contains(res.stdout, "dry run: every gate passes; nothing was changed") {
		t.Fatalf("healthy dry run: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	if got := snapshotCutover(t, env); got != before {
		t.Fatalf("a passing dry run changed something:\nbefore %s\nafter  %s", before, got)
	}
	if err := app.Ping(ctx); err != nil {
		t.Fatalf("a dry run ended an application session: %v", err)
	}
	// A difference the gates cannot see (made after the last clean pass,
	// behind tandem's back) is caught by the final check inside the fence:
	// the cutover aborts itself, lifting the fence.
	if _, err := newConn.Exec(ctx, `UPDATE customers SET email = 'tampered@example.com' WHERE id = 9`); err != nil {
		t.Fatal(err)
	}
	full := writeConfig(t, env.YAML("gates", `backfill: {enabled: true}
cutover: {max_lag: 1s, verify: full}
`))
	res = tandemCmd(t, "cutover", "--config", full)
	if res.code != 1 || !strings.Contains(res.stderr, "final check found differences") || !strings.Contains(res.stderr, "the cutover was aborted") {
		t.Fatalf("cutover over a tampered row: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	for _, step := range []string{"done fence the old database", "done lift the old database's fence"} {
		if !strings.Contains(res.stdout, step) {
			t.Errorf("the aborted cutover did not report %q:\n%s", step, res.stdout)
		}
	}
	if got := snapshotCutover(t, env); !strings.Contains(got, `old: fenced=false`) || !strings.Contains(got, `phase="forward"`) || strings.Contains(got, "gates_rev") {
		t.Fatalf("after the aborted cutover: %s", got)
	}
	if _, err := testkit.Connect(t, env.OldDSN).Exec(ctx, `INSERT INTO customers (name) VALUES ('after the abort')`); err != nil {
		t.Fatalf("the old database must take writes after an aborted cutover: %v", err)
	}

	// Nothing to abort, nothing to roll back.
	if res := tandemCmd(t, "cutover", "--abort", "--config", cfg); res.code != 0 || !strings.Contains(res.stdout, "nothing to abort") {
		t.Fatalf("abort with no cutover: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	if res := tandemCmd(t, "rollback", "--config", cfg); res.code != 0 || !strings.Contains(res.stdout, "point the applications at the old database") {
		t.Fatalf("rollback before cutover: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
}

// snapshotCutover renders what a cutover would change.
func snapshotCutover(t *testing.T, env *testkit.LifeEnv) string {
	t.Helper()
	ctx := context.Background()
	var b strings.Builder
	for _, side := range []struct{ name, dsn string }{{"old", env.OldDSN}, {"new", env.NewDSN}} {
		withTarget(t, side.dsn, func(c *pgx.Conn) struct{} {
			var fenced bool
			var slots, phase string
			if err := c.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
				WHERE d.datname = current_database() AND 'default_transaction_read_only=on' = ANY(s.setconfig)),
				COALESCE((SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots), '')`).Scan(&fenced, &slots); err != nil {
				t.Fatal(err)
			}
			_ = c.QueryRow(ctx, `SELECT phase FROM tandem.lifecycle WHERE name = 'gates'`).Scan(&phase)
			seqs, err := c.Query(ctx, `SELECT string_agg(format('%s=%s', c.relname, pg_sequence_last_value(c.oid)), ',' ORDER BY c.relname) FROM pg_class c WHERE c.relkind = 'S'`)
			if err != nil {
				t.Fatal(err)
			}
			seqText, err := pgx.CollectExactlyOneRow(seqs, pgx.RowTo[*string])
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "%s: fenced=%v slots=[%s] phase=%q sequences=[%v] ", side.name, fenced, slots, phase, deref(seqText))
			return struct{}{}
		})
	}
	return b.String()
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
