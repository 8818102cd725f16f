package verify

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/checkpoint"
)

// TestLiveInFlight plays the stream by hand, so the timing is exact: a
// source change whose copy has not reached the target yet must not be
// reported in live mode, while a real divergence still is.
//
// The "stream" here is this test: it changes the source, lets verify find
// the row differing and wait for the checkpoint, then applies the change to
// the target and moves tandem.checkpoint past the source position in the
// same transaction, as the target checkpoint store does.
func TestLiveInFlight(t *testing.T) {
	c := cluster(t)
	ctx := context.Background()
	src, clean := setupAccounts(t, c, 200)
	tgt := cloneDB(t, c, clean)
	cfg := testConfig(c, src, tgt, accountsMapping)
	srcRW, tgtRW := connectRW(t, c, src), connectRW(t, c, tgt)
	if err := checkpoint.EnsureSchema(ctx, tgtRW); err != nil {
		t.Fatal(err)
	}
	store := &checkpoint.TargetStore{Name: cfg.Name, Conn: tgtRW}
	saveCheckpoint(t, tgtRW, store, srcRW) // caught up before the change

	// In flight: on the source, not yet on the target.
	if _, err := srcRW.Exec(ctx, `UPDATE accounts SET full_name = 'in flight' WHERE id = 42; DELETE FROM accounts WHERE id = 43; INSERT INTO accounts SELECT 100000, 'new', 1, NULL, false, NULL, 1, now(), NULL, NULL, NULL, NULL, NULL, gen_random_uuid(), NULL`); err != nil {
		t.Fatal(err)
	}
	// A real divergence, which no stream will repair.
	if _, err := tgtRW.Exec(ctx, `UPDATE accounts_v2 SET note = 'damaged' WHERE id = 50`); err != nil {
		t.Fatal(err)
	}

	offline, err := runVerify(t, c, cfg, Options{ChunkRows: 32})
	if err != nil {
		t.Fatal(err)
	}
	checkDiffs(t, offline.Tables[0], []expect{
		{Different, "id=42", "name"}, {Extra, "id=43", ""}, {Missing, "id=100000", ""}, {Different, "id=50", "note"},
	})

	type result struct {
		rep *Report
		err error
	}
	done := make(chan result, 1)
	started := time.Now()
	go func() {
		rep, err := runVerify(t, c, cfg, Options{ChunkRows: 32, Live: true, WaitTimeout: 20 * time.Second})
		done <- result{rep, err}
	}()
	const lag = 500 * time.Millisecond
	time.Sleep(lag)
	applyStream(t, tgtRW, store, srcRW)
	// Nothing is in flight any more: confirm idle progress as the stream
	// does on keepalives, so later re-check rounds can proceed.
	var r result
	for idle := time.NewTicker(50 * time.Millisecond); ; {
		select {
		case r = <-done:
			idle.Stop()
		case <-idle.C:
			saveCheckpoint(t, tgtRW, store, srcRW)
			continue
		}
		break
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	if time.Since(started) < lag {
		t.Errorf("live verify returned after %s, before the stream caught up", time.Since(started))
	}
	checkDiffs(t, r.rep.Tables[0], []expect{{Different, "id=50", "note"}})
}

// applyStream applies the in-flight changes to the target and the
// checkpoint in one transaction.
func applyStream(t *testing.T, tgt *pgx.Conn, store *checkpoint.TargetStore, src *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	lsn, err := sourceLSN(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := tgt.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	_, err = tx.Exec(ctx, `UPDATE accounts_v2 SET name = 'in flight' WHERE id = 42;
DELETE FROM accounts_v2 WHERE id = 43;
INSERT INTO accounts_v2 (id, name, status, meta, balance, created_at, ext_id)
  VALUES (100000, 'new', 'active', '{}', 1, now(), gen_random_uuid());`)
	if err != nil {
		t.Fatal(err)
	}
	// The source row's created_at and ext_id come from the source's own
	// now() and gen_random_uuid(); copy them as the stream would.
	var created time.Time
	var ext string
	if err := src.QueryRow(ctx, `SELECT created_at, ext_id::text FROM accounts WHERE id = 100000`).Scan(&created, &ext); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE accounts_v2 SET created_at = $1, ext_id = $2::uuid WHERE id = 100000`, created, ext); err != nil {
		t.Fatal(err)
	}
	saveTx(t, tx, store, lsn)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

func saveCheckpoint(t *testing.T, tgt *pgx.Conn, store *checkpoint.TargetStore, src *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	lsn, err := sourceLSN(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := tgt.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	saveTx(t, tx, store, lsn)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// saveTx writes the checkpoint inside tx with the store's own statement.
func saveTx(t *testing.T, tx pgx.Tx, store *checkpoint.TargetStore, lsn change.LSN) {
	t.Helper()
	sql, params, _ := store.TxStatement(lsn)
	args := make([]any, len(params))
	for i, p := range params {
		args[i] = string(p)
	}
	if _, err := tx.Exec(context.Background(), sql, args...); err != nil {
		t.Fatal(err)
	}
}
