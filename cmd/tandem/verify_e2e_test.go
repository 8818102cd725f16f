package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tandem-migrate/tandem/internal/testkit"
)

// TestVerifyCommand runs `tandem verify` the way a cutover script would:
// exit 0 after a clean sync (while tandem still streams), 1 with the
// differing key printed after damage, 2 when it cannot check.
func TestVerifyCommand(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	w := testkit.NewWorkload(src, 31)
	if err := testkit.Seed(ctx, src, w, 5000); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, env.YAMLWithBackfill("verifycli", "{enabled: true}", ""))
	d := startDaemon(t, cfg)
	testkit.WaitBackfill(t, tgt, "verifycli", 3, 2*time.Minute, d.alive)
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, time.Minute, d.alive)

	res := tandemCmd(t, "verify", "--config", cfg)
	if res.code != 0 || !strings.Contains(res.stdout, "OK") {
		t.Fatalf("clean copy: exit %d\nstdout: %s\nstderr: %s", res.code, res.stdout, res.stderr)
	}
	d.terminate(30 * time.Second)

	if _, err := tgt.Exec(ctx, `UPDATE orders_v2 SET note = 'damaged' WHERE id = 4242`); err != nil {
		t.Fatal(err)
	}
	res = tandemCmd(t, "verify", "--config", cfg, "--table", "public.orders")
	if res.code != 1 || !strings.Contains(res.stdout, "id=4242") || !strings.Contains(res.stdout, "note") {
		t.Fatalf("damaged copy: exit %d, want 1 naming id=4242 and note\nstdout: %s\nstderr: %s", res.code, res.stdout, res.stderr)
	}
	res = tandemCmd(t, "verify", "--config", cfg, "--json")
	if res.code != 1 || !strings.Contains(res.stdout, `"different"`) {
		t.Fatalf("--json: exit %d\nstdout: %s", res.code, res.stdout)
	}

	if err := env.Target.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	res = tandemCmd(t, "verify", "--config", cfg)
	if res.code != 2 {
		t.Fatalf("target down: exit %d, want 2\nstderr: %s", res.code, res.stderr)
	}
}
