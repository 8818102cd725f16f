package pipeline_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tandem-migrate/tandem/internal/testkit"
	"github.com/tandem-migrate/tandem/pkg/decoder"
)

// TestRunStopsOnLostSlot: a slot invalidated while tandem was stopped
// stops Run itself with the explanation (not a retry, not a new slot that
// would skip the gap), even without the preflight `tandem run` does first.
func TestRunStopsOnLostSlot(t *testing.T) {
	ctx := context.Background()
	env := testkit.SetupWith(t, map[string]string{"max_slot_wal_keep_size": "1MB"}, nil)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	r := start(t, env, "lost")
	testkit.WaitSlot(t, src, "lost", time.Minute)
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, time.Minute, r.alive)
	r.stop(t)

	if err := testkit.Mark(ctx, src, 2); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := src.Exec(ctx, `SELECT pg_switch_wal()`); err != nil {
			t.Fatal(err)
		}
		if err := testkit.Mark(ctx, src, int64(10+i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := src.Exec(ctx, `CHECKPOINT`); err != nil {
		t.Fatal(err)
	}

	r = start(t, env, "lost")
	err, stopped := r.stopped(time.Minute)
	if !stopped {
		t.Fatal("Run keeps going with a lost slot")
	}
	var lost *decoder.SlotLostError
	if !errors.As(err, &lost) || !strings.Contains(err.Error(), "tandem teardown") {
		t.Fatalf("Run stopped with %v, want the lost slot explained", err)
	}
	var n int
	if err := tgt.QueryRow(ctx, `SELECT count(*) FROM marker WHERE id >= 2`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d changes from after the gap were applied", n)
	}
}
