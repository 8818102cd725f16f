package cutover

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/checkpoint"
)

// A marker is a transactional logical-decoding message in a transaction
// of its own. Everything committed before it precedes it in the WAL, and
// the stream commits its checkpoint at the marker's end at once (a source
// transaction with nothing left after it), so "the checkpoint passed the
// marker" is a durable proof that every earlier commit is on the other
// side — unlike the slot's confirmed position, which an idle stream moves
// only every few seconds.
func marker(ctx context.Context, conn *pgx.Conn, migration, what string) (change.LSN, error) {
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadWrite})
	if err != nil {
		return 0, fmt.Errorf("write marker: %w", err)
	}
	defer tx.Rollback(context.Background())
	// A marker the walsender does not send yet (async commit waits for
	// the WAL writer) would only add to the wait.
	if _, err := tx.Exec(ctx, `SET LOCAL synchronous_commit = on`); err != nil {
		return 0, fmt.Errorf("write marker: %w", err)
	}
	var lsn change.LSN
	if err := tx.QueryRow(ctx, `SELECT pg_logical_emit_message(true, $1, $2)`, "tandem/"+migration+"/marker", what).Scan(&lsn); err != nil {
		return 0, fmt.Errorf("write marker: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("write marker: %w", err)
	}
	return lsn, nil
}

// waitCheckpoint waits until store's checkpoint reaches lsn, at most
// timeout, and returns how long it took.
func waitCheckpoint(ctx context.Context, store checkpoint.Store, lsn change.LSN, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		got, ok, err := store.Load(ctx)
		if err != nil && !checkpoint.Missing(err) {
			return time.Since(start), err
		}
		if ok && got >= lsn {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) {
			return time.Since(start), &lagError{at: got, want: lsn, waited: timeout}
		}
		select {
		case <-ctx.Done():
			return time.Since(start), ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

type lagError struct {
	at, want change.LSN
	waited   time.Duration
}

func (e *lagError) Error() string {
	return fmt.Sprintf("the checkpoint is at %s and did not reach %s within %s", e.at, e.want, e.waited)
}
