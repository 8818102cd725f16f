package pipeline

import "time"

// backoff spaces the attempts after failures: it doubles from min up to
// max while attempts fail without getting anywhere, and starts from min
// again after an attempt that made progress. Progress is the replication
// stream hearing from the old database after (re)connecting, which needs
// both databases reachable and the setup done; an attempt that fails
// before that keeps doubling. So a link cut for seven seconds costs about
// seven seconds, not the sixteen a backoff left high from the previous
// outage would.
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
