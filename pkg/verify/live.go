package verify

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/change"
)

// liveRounds bounds the re-checks of a key while the stream runs. Each
// round reads the source, waits until the target holds everything up to
// that read, then reads the target; a key still differing in every round
// is reported. Only a row rewritten within each round's window (between
// the source read and the target read) can survive all rounds falsely.
const liveRounds = 3

// checkpointPoll is how often the stream checkpoint is re-read while
// waiting for it.
const checkpointPoll = 100 * time.Millisecond

// recheck re-reads differing keys once the stream has caught up with the
// source as read, and keeps only those that still differ. It returns them
// with their current kind, and how many settled as equal.
func (v *tableVerifier) recheck(ctx context.Context, cands []candidate) ([]candidate, int64, error) {
	var settled int64
	for round := 1; round <= liveRounds && len(cands) > 0; round++ {
		keys := make([][]string, len(cands))
		for i, c := range cands {
			keys[i] = c.key
		}
		src, err := v.fetchByKeys(ctx, 's', keys, false)
		if err != nil {
			return nil, 0, err
		}
		lsn, err := sourceLSN(ctx, v.env.src)
		if err != nil {
			return nil, 0, err
		}
		if err := v.env.waitCheckpoint(ctx, lsn); err != nil {
			return nil, 0, err
		}
		tgt, err := v.fetchByKeys(ctx, 't', keys, false)
		if err != nil {
			return nil, 0, err
		}
		next := cands[:0:0]
		for _, c := range cands {
			kind := classify(src, tgt, keyID(c.key))
			if kind == "" {
				settled++
				continue
			}
			c.kind = kind
			next = append(next, c)
		}
		v.log.Debug("live re-check", "round", round, "keys", len(cands), "still_differ", len(next), "source_lsn", lsn)
		cands = next
	}
	return cands, settled, nil
}

// classify compares one key's lookups; "" means equal (or gone from both).
func classify(src, tgt map[string]fetched, id string) Kind {
	s, inSrc := src[id]
	t, inTgt := tgt[id]
	switch {
	case inSrc && inTgt && s.hash != t.hash:
		return Different
	case inSrc && !inTgt:
		return Missing
	case !inSrc && inTgt:
		return Extra
	}
	return ""
}

// sourceLSN is the source's WAL insert position after a read: every
// transaction that read saw has its commit record before it. The insert
// position, not the write position, because with synchronous_commit off a
// commit is visible before its record is written.
func sourceLSN(ctx context.Context, src *pgx.Conn) (change.LSN, error) {
	var s string
	if err := src.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&s); err != nil {
		return 0, fmt.Errorf("read source WAL position: %w", err)
	}
	var lsn change.LSN
	if err := lsn.Scan(s); err != nil {
		return 0, fmt.Errorf("read source WAL position %q: %w", s, err)
	}
	return lsn, nil
}

// waitCheckpoint waits until the stream has applied the source up to lsn.
// The checkpoint moves with traffic and with the stream's periodic idle
// confirmations, so an idle source still gets there.
func (e *env) waitCheckpoint(ctx context.Context, lsn change.LSN) error {
	deadline := time.Now().Add(e.opts.WaitTimeout)
	for {
		pos, ok, err := e.store.Load(ctx)
		if err != nil {
			return err
		}
		if ok && pos >= lsn {
			return nil
		}
		if time.Now().After(deadline) {
			at := "no checkpoint saved yet"
			if ok {
				at = "checkpoint at " + pos.String()
			}
			return fmt.Errorf("live: the stream did not reach source LSN %s within %s (%s): is `tandem run` streaming this migration (name %q)?", lsn, e.opts.WaitTimeout, at, e.name)
		}
		t := time.NewTimer(checkpointPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}
