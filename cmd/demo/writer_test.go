package main

import (
	"context"
	"math/rand"
	"testing"
	"time"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
)

// TestWriterSwitch writes every kind of change in both schemas, and plays
// a fence: the session is ended and the database read-only, so the writer
// must count refusals and retry, not fail, and commit once it is pointed at
// a database that takes writes.
func TestWriterSwitch(t *testing.T) {
	ctx := context.Background()
	old := pgcluster.ForTest(t, pgcluster.Options{Name: "old"})
	new := pgcluster.ForTest(t, pgcluster.Options{Name: "new"})
	if err := old.Exec(ctx, "postgres", oldSchema+`INSERT INTO customers (id, tenant_id, name) VALUES (1, 1, 'a');
		INSERT INTO orders (id, tenant_id, customer_id, status_code, total) VALUES (1, 1, 1, 1, 1), (2, 0, 1, 9, 2);`); err != nil {
		t.Fatal(err)
	}
	if err := new.Exec(ctx, "postgres", newSchema+`INSERT INTO customers (id, tenant_id, name, created_at) VALUES (1, 1, 'a', now());
		INSERT INTO orders_v2 (id, tenant_id, customer_ref, status, total, preferences, created_at) VALUES (1, 1, 1, 'pending', 1, '{}', now());`); err != nil {
		t.Fatal(err)
	}
	w := newWriter(old, new)
	defer w.close()
	// No history here: new rows go after the two orders and one customer.
	w.nextCustomer, w.nextOrder = 2, 3
	// A fixed seed, so every kind of change is drawn.
	w.rng = rand.New(rand.NewSource(1))
	for _, s := range []side{oldSide, newSide} {
		w.point(s)
		seen := map[changeKind]bool{}
		for i := 0; i < 300; i++ {
			c := w.randomChange()
			seen[c.kind] = true
			if done, err := w.attempt(ctx, &c); err != nil || !done {
				t.Fatalf("%s database, change %+v: done %v, %v", s, c, done, err)
			}
		}
		if len(seen) != int(deleteOrder)+1 {
			t.Fatalf("%s database: only kinds %v drawn", s, seen)
		}
	}
	if w.refusals() != 0 || w.txs[oldSide].Load() == 0 || w.txs[newSide].Load() == 0 {
		t.Fatalf("refused %d, committed old %d new %d", w.refusals(), w.txs[oldSide].Load(), w.txs[newSide].Load())
	}

	// The fence on the new database: read-only for new sessions, and the
	// writer's session ended.
	w.point(newSide)
	if err := new.Exec(ctx, "postgres", `ALTER DATABASE postgres SET default_transaction_read_only = on;
		SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'demo-writer'`); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		c := w.newOrder(insertOrder)
		if done, err := w.attempt(ctx, &c); err != nil || done {
			t.Fatalf("attempt %d on the fenced database: done %v, %v; want refused and no error", i, done, err)
		}
	}
	if got := w.refused[newSide].Load(); got != 3 {
		t.Fatalf("refused on the new database: %d, want 3", got)
	}
	// Pointed back at the old database, the same change goes through.
	w.point(oldSide)
	c := w.newOrder(insertOrder)
	c.customer = 1 // no tandem here: customers written on the new database are not on the old one
	if done, err := w.attempt(ctx, &c); err != nil || !done {
		t.Fatalf("after the switch: done %v, %v", done, err)
	}
	o := w.outagesSoFar()
	if len(o) != 1 || o[0].attempts != 3 || o[0].resumed != oldSide || o[0].took <= 0 || o[0].took > time.Minute {
		t.Fatalf("outages %+v, want one of 3 attempts that ended on the old database", o)
	}
}
