package pgcluster

import (
	"context"
	"os"
	"testing"
	"time"
)

// EnvSkip names the environment variable that, set to "1", makes ForTest skip
// the calling test. It is the only way to skip: a missing PostgreSQL
// installation is a failure, so a broken CI image cannot pass silently.
const EnvSkip = "TANDEM_SKIP_PG"

// ForTest starts a cluster for t and registers its Destroy with t.Cleanup.
//
// It never skips because of testing.Short(): in this project -short means
// "fewer rounds", not "no database", so integration tests keep running in
// `make test-short`. Tests that want fewer iterations check testing.Short()
// themselves.
func ForTest(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if os.Getenv(EnvSkip) == "1" {
		t.Skipf("%s=1: skipping test that needs a PostgreSQL cluster", EnvSkip)
	}
	if opts.Name == "" {
		opts.Name = t.Name()
	}
	c, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatalf("pgcluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			// The server's view is often the missing half of a failure.
			t.Logf("pgcluster %q server log tail (%s):\n%s", c.Name(), c.LogFile(), c.LogTail(8<<10))
		}
		// t.Context() is already cancelled when cleanups run.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := c.Destroy(ctx); err != nil {
			t.Errorf("pgcluster: %v", err)
		}
	})
	return c
}
