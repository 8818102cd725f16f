package verify

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/checkpoint"
)

// maxPending bounds the keys held in memory in range mode (rows a chunk
// could not pair). Past it the tables differ so much that exact counts stop
// mattering; the pass stops with a truncated, lower-bound report.
const maxPending = 1_000_000

// fetchBatch is how many keys one by-key lookup binds.
const fetchBatch = 1000

// env is what the tables of one verification share.
type env struct {
	src, tgt *pgx.Conn
	opts     Options
	log      *slog.Logger
	pace     *pacer
	// store is the stream's checkpoint, read in live mode only.
	store checkpoint.Store
	// name is the migration's name, for messages.
	name string
}

// tableVerifier runs one pass over one table in steps (one chunk or page
// each), so Run can loop to the end and Shadow can interleave tables.
type tableVerifier struct {
	env *env
	p   *plan
	log *slog.Logger

	rec       *reconciler
	equal     int64 // rows of chunks whose checksums matched
	chunks    int64
	cursor    []string // range: last source key; keys mode: page cursor of the side being read
	onTarget  bool     // keys mode: source pages done, reading target pages
	done      bool
	truncated bool
	started   time.Time
}

func newTableVerifier(e *env, p *plan) *tableVerifier {
	return &tableVerifier{
		env: e, p: p, rec: newReconciler(), started: time.Now(),
		log: e.log.With("table", p.label),
	}
}

func (v *tableVerifier) mode() string {
	if v.p.ranged {
		return "range"
	}
	return "keys"
}

// step reads one chunk (range mode) or one page (keys mode) and returns
// the source rows it covered.
func (v *tableVerifier) step(ctx context.Context) (int64, error) {
	if v.done {
		return 0, nil
	}
	var n int64
	var err error
	if v.p.ranged {
		n, err = v.rangeStep(ctx)
	} else {
		n, err = v.keysStep(ctx)
	}
	if err != nil {
		return n, err
	}
	v.chunks++
	if v.p.ranged && v.rec.pending() > maxPending {
		v.log.Warn("too many differing rows to hold; stopping this table early", "pending", v.rec.pending())
		v.truncated, v.done = true, true
	}
	return n, v.env.pace.wait(ctx, n)
}
