package config

import (
	"strings"
	"testing"
	"time"
)

func TestBounds(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string // "" means valid; otherwise the whole "field: message" line
	}{
		{"defaults", func(*Config) {}, ""},
		{"commit_interval at its floor", func(c *Config) { c.Apply.CommitInterval = time.Millisecond }, ""},
		{"commit_interval in nanoseconds", func(c *Config) { c.Apply.CommitInterval = 200 },
			"apply.commit_interval: must be between 1ms and 1m, got 200ns"},
		{"commit_interval of an hour", func(c *Config) { c.Apply.CommitInterval = time.Hour },
			"apply.commit_interval: must be between 1ms and 1m, got 1h"},
		{"retry_min too small", func(c *Config) { c.Apply.RetryMin = time.Microsecond },
			"apply.retry_min: must be between 10ms and 1m, got 1µs"},
		{"retry_max too large", func(c *Config) { c.Apply.RetryMax = 2 * time.Hour },
			"apply.retry_max: must be between 10ms and 1h, got 2h"},
		{"retry_max at its ceiling", func(c *Config) { c.Apply.RetryMax = time.Hour }, ""},
		{"retry_min above retry_max", func(c *Config) { c.Apply.RetryMin, c.Apply.RetryMax = 40*time.Second, 30*time.Second },
			"apply.retry_min: 40s is more than apply.retry_max (30s): the backoff starts at retry_min and doubles up to retry_max; lower retry_min or raise retry_max"},
		{"retry_min equal to retry_max", func(c *Config) { c.Apply.RetryMin, c.Apply.RetryMax = time.Second, time.Second }, ""},
		{"shutdown_timeout too short", func(c *Config) { c.Apply.ShutdownTimeout = 500 * time.Millisecond },
			"apply.shutdown_timeout: must be between 1s and 10m, got 500ms"},
		{"shutdown_timeout too long", func(c *Config) { c.Apply.ShutdownTimeout = 11 * time.Minute },
			"apply.shutdown_timeout: must be between 1s and 10m, got 11m"},
		{"receive_timeout in nanoseconds", func(c *Config) { c.Source.ReceiveTimeout = 60 },
			"source.receive_timeout: must be between 1s and 10m, got 60ns"},
		{"receive_timeout of an hour", func(c *Config) { c.Source.ReceiveTimeout = time.Hour },
			"source.receive_timeout: must be between 1s and 10m, got 1h"},
		{"statement_timeout too short for any COPY", func(c *Config) { c.Apply.StatementTimeout = 100 * time.Millisecond },
			"apply.statement_timeout: must be between 1s and 1h, got 100ms"},
		{"statement_timeout at its ceiling", func(c *Config) { c.Apply.StatementTimeout = time.Hour }, ""},
		{"ready_max_lag in nanoseconds", func(c *Config) { c.Metrics.ReadyMaxLag = 30 },
			"metrics.ready_max_lag: must be between 1s and 24h, got 30ns"},
		{"max_lag off", func(c *Config) { c.Backfill.MaxLag = 0 }, ""},
		{"max_lag in nanoseconds", func(c *Config) { c.Backfill.MaxLag = 30 },
			"backfill.max_lag: must be 0 (off) or between 1s and 24h, got 30ns"},
		{"max_lag negative", func(c *Config) { c.Backfill.MaxLag = -time.Second },
			"backfill.max_lag: must be 0 (off) or between 1s and 24h, got -1s"},
		{"throttle_check_interval in nanoseconds", func(c *Config) { c.Backfill.ThrottleCheckInterval = 1 },
			"backfill.throttle_check_interval: must be between 10ms and 1m, got 1ns"},
		{"throttle_check_interval at its floor", func(c *Config) { c.Backfill.ThrottleCheckInterval = 10 * time.Millisecond }, ""},
		{"batch_changes negative", func(c *Config) { c.Apply.BatchChanges = -1 },
			"apply.batch_changes: must be between 1 and 100000, got -1"},
		{"commit_changes huge", func(c *Config) { c.Apply.CommitChanges = 20_000_000 },
			"apply.commit_changes: must be between 1 and 10000000, got 20000000"},
		{"chunk_rows huge", func(c *Config) { c.Backfill.ChunkRows = 2_000_000 },
			"backfill.chunk_rows: must be between 1 and 1000000, got 2000000"},
		{"chunk_bytes tiny", func(c *Config) { c.Backfill.ChunkBytes = 1000 },
			"backfill.chunk_bytes: must be between 65536 (64 KiB) and 1073741824 (1 GiB), got 1000"},
		{"chunk_bytes huge", func(c *Config) { c.Backfill.ChunkBytes = 2 << 30 },
			"backfill.chunk_bytes: must be between 65536 (64 KiB) and 1073741824 (1 GiB), got 2147483648 (2 GiB)"},
		{"chunk_bytes at its floor", func(c *Config) { c.Backfill.ChunkBytes = 64 << 10 }, ""},
		{"workers", func(c *Config) { c.Backfill.Workers = 100 },
			"backfill.workers: must be between 1 and 64, got 100"},
		{"rows_per_second negative", func(c *Config) { c.Backfill.RowsPerSecond = -1 },
			"backfill.rows_per_second: must be between 0 and 1000000000, got -1"},
		{"bytes_per_second negative", func(c *Config) { c.Backfill.BytesPerSecond = -0.5 },
			"backfill.bytes_per_second: must be between 0 and 1099511627776 (1 TiB), got -0.5"},
		{"max_active_backends negative", func(c *Config) { c.Backfill.MaxActiveBackends = -3 },
			"backfill.max_active_backends: must be between 0 and 100000, got -3"},
		{"verify chunk_rows negative", func(c *Config) { c.Verify.ChunkRows = -5 },
			"verify.chunk_rows: must be between 1 and 1000000, got -5"},
		{"verify rows_per_second negative", func(c *Config) { c.Verify.RowsPerSecond = -1 },
			"verify.rows_per_second: must be between 0 and 1000000000, got -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.mutate(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != 1 || lines[0] != tt.want {
				t.Fatalf("error:\n%v\nwant exactly:\n%s", err, tt.want)
			}
		})
	}
}

func TestFmtDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Hour: "1h", 90 * time.Minute: "1h30m", time.Minute: "1m", 90 * time.Second: "1m30s",
		10 * time.Millisecond: "10ms", 0: "0s", 24 * time.Hour: "24h", time.Hour + time.Second: "1h0m1s",
	} {
		if got := fmtDuration(d); got != want {
			t.Errorf("fmtDuration(%v) = %q, want %q", d, got, want)
		}
	}
}
