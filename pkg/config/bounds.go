package config

import (
	"fmt"
	"strings"
	"time"
)

// The bounds below keep a typo from turning into an outage: a commit
// interval of an hour, a retry every nanosecond, a chunk of one byte.
// They are wide on purpose; configs/example.yaml documents each of them.

// durationBound is the range a duration field must fall in. off allows 0,
// for fields where 0 turns the feature off.
type durationBound struct {
	field    string
	value    time.Duration
	min, max time.Duration
	off      bool
}

// sizeBound is the range a count or size field must fall in; 0 is allowed
// when min is 0 (no cap, or off).
type sizeBound struct {
	field    string
	value    float64
	min, max float64
	unit     string // "bytes" prints the bound in KiB/MiB/GiB too
}

func (c *Config) durationBounds() []durationBound {
	return []durationBound{
		{field: "apply.commit_interval", value: c.Apply.CommitInterval, min: time.Millisecond, max: time.Minute},
		{field: "apply.retry_min", value: c.Apply.RetryMin, min: 10 * time.Millisecond, max: time.Minute},
		{field: "apply.retry_max", value: c.Apply.RetryMax, min: 10 * time.Millisecond, max: time.Hour},
		{field: "apply.shutdown_timeout", value: c.Apply.ShutdownTimeout, min: time.Second, max: 10 * time.Minute},
		// Big enough for the largest chunk's COPY (chunk_bytes up to 1 GiB).
		{field: "apply.statement_timeout", value: c.Apply.StatementTimeout, min: time.Second, max: time.Hour},
		// Under a second, scheduling hiccups would look like a dead link;
		// tandem asks for a reply after a third of it.
		{field: "source.receive_timeout", value: c.Source.ReceiveTimeout, min: time.Second, max: 10 * time.Minute},
		{field: "metrics.ready_max_lag", value: c.Metrics.ReadyMaxLag, min: time.Second, max: 24 * time.Hour},
		// Below a second the backfill would pause at every commit interval.
		{field: "backfill.max_lag", value: c.Backfill.MaxLag, min: time.Second, max: 24 * time.Hour, off: true},
		{field: "backfill.throttle_check_interval", value: c.Backfill.ThrottleCheckInterval, min: 10 * time.Millisecond, max: time.Minute},
		{field: "backfill.progress_interval", value: c.Backfill.ProgressInterval, min: time.Second, max: time.Hour},
		{field: "cutover.max_lag", value: c.Cutover.MaxLag, min: 10 * time.Millisecond, max: time.Hour},
		{field: "cutover.timeout", value: c.Cutover.Timeout, min: time.Second, max: 24 * time.Hour},
	}
}

func (c *Config) sizeBounds() []sizeBound {
	return []sizeBound{
		{field: "apply.batch_changes", value: float64(c.Apply.BatchChanges), min: 1, max: 100_000},
		{field: "apply.commit_changes", value: float64(c.Apply.CommitChanges), min: 1, max: 10_000_000},
		{field: "backfill.chunk_rows", value: float64(c.Backfill.ChunkRows), min: 1, max: 1_000_000},
		{field: "backfill.chunk_bytes", value: float64(c.Backfill.ChunkBytes), min: 64 << 10, max: 1 << 30, unit: "bytes"},
		{field: "backfill.workers", value: float64(c.Backfill.Workers), min: 1, max: 64},
		{field: "backfill.rows_per_second", value: c.Backfill.RowsPerSecond, min: 0, max: 1e9},
		{field: "backfill.bytes_per_second", value: c.Backfill.BytesPerSecond, min: 0, max: 1 << 40, unit: "bytes"},
		{field: "backfill.max_active_backends", value: float64(c.Backfill.MaxActiveBackends), min: 0, max: 100_000},
		{field: "verify.chunk_rows", value: float64(c.Verify.ChunkRows), min: 1, max: 1_000_000},
		{field: "verify.rows_per_second", value: c.Verify.RowsPerSecond, min: 0, max: 1e9},
		{field: "cutover.sequence_margin", value: float64(c.Cutover.SequenceMargin), min: 0, max: 1e15},
		{field: "reverse.round_trip_sample", value: float64(max(c.Reverse.RoundTripSample, 1)), min: 1, max: 1e12},
	}
}

// checkBounds reports every duration and size field outside its range.
func (c *Config) checkBounds(add func(field, format string, args ...any)) {
	for _, b := range append(c.durationBounds(), c.natsDurationBounds()...) {
		switch {
		case b.off && b.value == 0:
		case b.value < b.min || b.value > b.max:
			if b.off {
				add(b.field, "must be 0 (off) or between %s and %s, got %s", fmtDuration(b.min), fmtDuration(b.max), fmtDuration(b.value))
			} else {
				add(b.field, "must be between %s and %s, got %s", fmtDuration(b.min), fmtDuration(b.max), fmtDuration(b.value))
			}
		}
	}
	if c.Apply.RetryMin > c.Apply.RetryMax {
		add("apply.retry_min", "%s is more than apply.retry_max (%s): the backoff starts at retry_min and doubles up to retry_max; lower retry_min or raise retry_max",
			fmtDuration(c.Apply.RetryMin), fmtDuration(c.Apply.RetryMax))
	}
	for _, b := range append(c.sizeBounds(), c.natsSizeBounds()...) {
		if b.value < b.min || b.value > b.max {
			add(b.field, "must be between %s and %s, got %s", fmtSize(b.min, b.unit), fmtSize(b.max, b.unit), fmtSize(b.value, b.unit))
		}
	}
}

// fmtDuration prints 1h and 2m rather than time's 1h0m0s and 2m0s.
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// fmtSize prints a count plainly, and a byte size with its binary unit
// when it has a round one: 65536 (64 KiB).
func fmtSize(v float64, unit string) string {
	s := fmt.Sprintf("%.0f", v)
	if v != float64(int64(v)) {
		s = fmt.Sprintf("%g", v)
	}
	if unit != "bytes" || v <= 0 {
		return s
	}
	for _, u := range []struct {
		name string
		size float64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if v >= u.size && v == float64(int64(v/u.size))*u.size {
			return fmt.Sprintf("%s (%.0f %s)", s, v/u.size, u.name)
		}
	}
	return s
}
