package verify

import (
	"context"
	"time"
)

// pacer holds the rows read from the source to a rate, like the backfill:
// after each chunk it sleeps until the rows read so far are due. It keeps
// no credit from idle time beyond maxCredit, so a pause (the shadow
// between passes, a slow query) is not followed by a burst.
type pacer struct {
	rate  float64 // rows per second; <= 0 means no cap
	start time.Time
	rows  float64
	now   func() time.Time
}

const maxCredit = time.Second

func newPacer(rowsPerSecond float64) *pacer {
	return &pacer{rate: rowsPerSecond, now: time.Now}
}

// wait accounts for n rows read and sleeps as long as the rate requires.
func (p *pacer) wait(ctx context.Context, n int64) error {
	if p.rate <= 0 || n <= 0 {
		return ctx.Err()
	}
	now := p.now()
	if p.start.IsZero() || now.Sub(p.due()) > maxCredit {
		p.start, p.rows = now, 0
	}
	p.rows += float64(n)
	d := p.due().Sub(now)
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// due is when the rows read so far may have been read at the rate.
func (p *pacer) due() time.Time {
	return p.start.Add(time.Duration(p.rows / p.rate * float64(time.Second)))
}
