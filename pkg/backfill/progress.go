package backfill

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// progress is what one table's periodic log line says. Between `copying`
// and `table copied` a long copy would otherwise be silent for hours.
type progress struct {
	estimated int64
	// copied counts the rows the applier has written for this table in
	// this process; base is its value when this copy began, and
	// resumed the rows copied by earlier runs.
	copied  func() float64
	base    float64
	resumed int64
	began   time.Time
	// the previous line, for the current rate
	lastRows int64
	lastAt   time.Time
}

func newProgress(j *Job, rows prometheus.Counter, now time.Time) *progress {
	p := &progress{estimated: j.Source.EstimatedRows, copied: counterValue(rows), resumed: j.Progress.RowsCopied, began: now, lastAt: now}
	p.base = p.copied()
	p.lastRows = p.resumed
	return p
}

func counterValue(c prometheus.Counter) func() float64 {
	return func() float64 {
		var m dto.Metric
		if c.Write(&m) != nil {
			return 0
		}
		return m.GetCounter().GetValue()
	}
}

// line returns the fields of one progress line at now: rows copied so
// far (earlier runs included), percent of the estimate, the rate since
// the last line, the ETA at this run's average rate, why the copy is
// held back ("no" when it is not) and the rate cap.
func (p *progress) line(now time.Time, throttled string, rateCap float64) []any {
	rows := p.resumed + int64(p.copied()-p.base)
	rate := 0.0
	if d := now.Sub(p.lastAt).Seconds(); d > 0 {
		rate = float64(rows-p.lastRows) / d
	}
	p.lastRows, p.lastAt = rows, now

	percent, eta := "unknown", "unknown"
	if p.estimated > 0 {
		// reltuples is an estimate: never claim 100% before the end.
		percent = fmt.Sprintf("%.1f", min(99.9, 100*float64(rows)/float64(p.estimated)))
		thisRun := float64(rows - p.resumed)
		if left := p.estimated - rows; left > 0 && thisRun > 0 {
			avg := thisRun / now.Sub(p.began).Seconds()
			eta = time.Duration(float64(left) / avg * float64(time.Second)).Round(time.Second).String()
		}
	}
	if throttled == "" {
		throttled = "no"
	}
	fields := []any{"rows_copied", rows, "estimated_rows", p.estimated, "percent", percent,
		"rows_per_second", fmt.Sprintf("%.0f", rate), "eta", eta, "throttled", throttled}
	if rateCap > 0 {
		fields = append(fields, "rate_cap", rateCap)
	}
	return fields
}

// logProgress logs j's progress every interval until ctx ends; the
// returned func stops it (when the table is copied).
func (r *Runner) logProgress(ctx context.Context, j *Job, log *slog.Logger) (stop func()) {
	interval := r.Cfg.ProgressInterval
	if interval <= 0 {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	p := newProgress(j, r.Metrics.Rows.WithLabelValues(j.Name()), time.Now())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				log.Info("copy progress", p.line(now, r.Control.Throttled(), r.Control.Limits().RowsPerSecond)...)
			}
		}
	}()
	return func() { cancel(); <-done }
}
