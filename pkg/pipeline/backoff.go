package pipeline

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tandem-migrate/tandem/pkg/metrics"
)

// backoff spaces the attempts after failures: it doubles from min up to
// max while attempts fail without getting anywhere, and starts from min
// again after an attempt that made progress (see attempt.progressed). So
// a link cut for seven seconds costs about seven seconds, not the sixteen
// a backoff left high from the previous outage would, while a failure that
// persists (a full disk on the new database) is retried less and less
// often instead of re-reading the backlog every half second.
type backoff struct {
	min, max time.Duration
	cur      time.Duration
}

// next is the wait after a failed attempt.
func (b *backoff) next(progressed bool) time.Duration {
	if progressed || b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur
}

// attempt records what one attempt of the stream achieved. The applier
// settles it; the retry loop reads it when the attempt has failed.
type attempt struct {
	settled atomic.Bool // caught up, or rows committed
	worked  atomic.Bool // rows committed on the new database
	// lastCode is the SQLSTATE the previous attempt failed with.
	lastCode string
}

func (a *attempt) reset() {
	a.settled.Store(false)
	a.worked.Store(false)
}

// settle returns the applier's callback: the first time the stream works
// end to end it is ready and streaming (not when the attempt starts, so
// an attempt that fails at its first write does not flap to healthy).
func (a *attempt) settle(h *metrics.Health, m *metrics.Stream) func(work bool) {
	return func(work bool) {
		if work {
			a.worked.Store(true)
		}
		if !a.settled.Swap(true) {
			h.Set(true, "")
			m.Streaming.Set(1)
		}
	}
}

// progressed reports whether the failed attempt got anywhere: it committed
// rows, ran for a minute, or settled and then failed differently from the
// attempt before it. A settled attempt that fails with the same database
// error again is a failure that persists, not a link that came back.
func (a *attempt) progressed(err error, ran time.Duration) bool {
	code := ""
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		code = pgErr.Code
	}
	repeated := code != "" && code == a.lastCode
	a.lastCode = code
	return a.worked.Load() || ran > time.Minute || (a.settled.Load() && !repeated)
}
