package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
)

// TestRemoveStale: a demo killed with its cluster and tandem running
// leaves them behind; the next demo stops both and removes the directory,
// but leaves a running demo's directory alone.
func TestRemoveStale(t *testing.T) {
	parent := t.TempDir()
	dead, err := newScratch(parent)
	if err != nil {
		t.Fatal(err)
	}
	// A pid no process has: the demo that made it is gone.
	if err := writePID(dead, demoPIDFile, 1<<22+1); err != nil {
		t.Fatal(err)
	}
	c, err := pgcluster.Start(context.Background(), pgcluster.Options{Dir: dead, Name: "old"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Destroy(context.Background()) })
	// Stands in for the orphaned `tandem run`: what stopLeftovers looks
	// for in its command line.
	fake := exec.Command("bash", "-c", "exec -a 'bin/tandem run --config configs/demo.yaml' sleep 300")
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fake.Process.Kill() })
	go func() { _ = fake.Wait() }()
	if err := writePID(dead, tandemPIDFile, fake.Process.Pid); err != nil {
		t.Fatal(err)
	}

	live, err := newScratch(parent) // this test process plays the running demo
	if err != nil {
		t.Fatal(err)
	}
	if !cmdlineHas(os.Getpid(), "demo") {
		t.Skip("this test binary's command line does not say demo; cannot play a running demo")
	}

	removed, errs := removeStale(parent)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if len(removed) != 1 || !strings.Contains(removed[0], dead) || !strings.Contains(removed[0], "tandem (pid") || !strings.Contains(removed[0], "PostgreSQL (pid") {
		t.Fatalf("removed %q, want %s with its tandem and PostgreSQL", removed, dead)
	}
	if c.Running() {
		t.Fatal("the stale cluster still runs")
	}
	if pgcluster.ProcessAlive(fake.Process.Pid) {
		t.Fatal("the stale tandem still runs")
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Fatalf("%s still there: %v", dead, err)
	}
	if _, err := os.Stat(filepath.Join(live, demoPIDFile)); err != nil {
		t.Fatalf("the running demo's directory was touched: %v", err)
	}
}
