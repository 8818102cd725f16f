package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tandem-migrate/tandem/internal/testkit"
)

// TestSecondRunRefused: a second `tandem run` of a migration that runs
// (here with a control socket of its own, as on another host) refuses to
// start, says why, and leaves the first one streaming.
func TestSecondRunRefused(t *testing.T) {
	const slot = "twice"
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	cfg := writeConfig(t, env.YAML(slot, ""))
	first := startDaemon(t, cfg)
	waitStreaming(t, src, slot)

	began := time.Now()
	second := startDaemon(t, cfg)
	select {
	case <-second.exited:
	case <-time.After(time.Minute):
		t.Fatalf("the second run still runs after a minute; log tail:\n%s", tail(second.log(), 20))
	}
	t.Logf("second run refused after %s", time.Since(began).Round(100*time.Millisecond))
	if code := second.cmd.ProcessState.ExitCode(); code == 0 {
		t.Errorf("second run exited 0, want non-zero")
	}
	for _, want := range []string{"another `tandem run` of migration \"twice\" is running", "application \"tandem/twice/lock\"", "Stop it first"} {
		if !strings.Contains(second.log(), want) {
			t.Errorf("the second run's output lacks %q:\n%s", want, tail(second.log(), 10))
		}
	}
	if err := first.alive(); err != nil {
		t.Fatalf("the refused run disturbed the first: %v", err)
	}
	if err := testkit.Mark(context.Background(), src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, time.Minute, first.alive)

	// Once the first is gone, a new run starts at once, even after a
	// kill -9 (the server sees the closed socket and frees the lock).
	first.kill()
	third := startDaemon(t, cfg)
	if err := testkit.Mark(context.Background(), src, 2); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 2, time.Minute, third.alive)
	if code, _ := third.terminate(30 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}
