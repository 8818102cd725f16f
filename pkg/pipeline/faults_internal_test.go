package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/decoder"
	"github.com/tandem-migrate/tandem/pkg/sink"
)

func TestBackoff(t *testing.T) {
	const min, max = 500 * time.Millisecond, 4 * time.Second
	tests := []struct {
		name       string
		progressed []bool
		want       []time.Duration
	}{
		{"doubles while nothing works", []bool{false, false, false, false, false, false},
			[]time.Duration{min, time.Second, 2 * time.Second, 4 * time.Second, max, max}},
		// The issue: after a long outage the backoff stayed high, so the
		// next short cut cost the whole high wait.
		{"starts small again once reconnected", []bool{false, false, false, false, true, false},
			[]time.Duration{min, time.Second, 2 * time.Second, 4 * time.Second, min, time.Second}},
		{"every attempt progresses", []bool{true, true, true}, []time.Duration{min, min, min}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := backoff{min: min, max: max}
			for i, p := range tt.progressed {
				if got := b.next(p); got != tt.want[i] {
					t.Fatalf("wait %d: %s, want %s", i+1, got, tt.want[i])
				}
			}
		})
	}
}

func TestRetryableFaults(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"silent replication link", fmt.Errorf("stream: %w", &decoder.SilentError{For: time.Minute}), true},
		{"target call past apply.statement_timeout", &sink.ApplyError{Err: &sink.TimeoutError{Timeout: time.Minute, Err: context.DeadlineExceeded}}, true},
		{"apply lock of an earlier session", &retryError{errors.New("still held")}, true},
		{"lost slot", &decoder.SlotLostError{Slot: "s", Reason: "wal_status is lost"}, false},
		{"lost slot reported while receiving", fmt.Errorf("receive from source: %w", &decoder.SlotLostError{Slot: "s"}), false},
		{"another run", &FatalError{Err: &AnotherRunError{Migration: "m"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Retryable(tt.err); got != tt.want {
				t.Fatalf("Retryable(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// TestLagWhileDisconnected: lag keeps growing while the old database
// cannot be read, from the last contact, and from the oldest unprocessed
// position while it can.
func TestLagWhileDisconnected(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		processed change.LSN
		polls     []walSample // successful polls of the source's position
		at        time.Duration
		wantLag   time.Duration
		wantBytes int64
	}{
		{"caught up, polls fresh", 100, []walSample{{t0, 100}, {t0.Add(time.Second), 100}}, time.Second + 500*time.Millisecond, 0, 0},
		{"caught up, then the old database went silent", 100, []walSample{{t0, 100}}, 10 * time.Second, 10 * time.Second, 0},
		{"behind by one fresh sample: under a poll", 100, []walSample{{t0, 150}}, 500 * time.Millisecond, 0, 50},
		{"behind and the stream is down, source readable", 100, []walSample{{t0, 150}, {t0.Add(time.Second), 180}, {t0.Add(2 * time.Second), 200}}, 2*time.Second + 100*time.Millisecond, 2*time.Second + 100*time.Millisecond, 100},
		{"behind, then unreachable: the oldest unprocessed sample is older than the contact", 100, []walSample{{t0, 150}, {t0.Add(5 * time.Second), 200}}, 20 * time.Second, 20 * time.Second, 100},
		{"never reached", 0, nil, 30 * time.Second, 30 * time.Second, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			cfg := &config.Config{Source: config.SourceConfig{Slot: "s"}}
			p := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), reg)
			p.contact = t0 // Run's start
			p.processed.Store(uint64(tt.processed))
			for _, s := range tt.polls {
				p.observeSource(s.at, decoder.SlotInfo{CurrentLSN: s.lsn})
			}
			lag, bytes := p.lagAt(t0.Add(tt.at))
			if lag != tt.wantLag || bytes != tt.wantBytes {
				t.Fatalf("lag %s, %d bytes; want %s, %d bytes", lag, bytes, tt.wantLag, tt.wantBytes)
			}
		})
	}
}

// TestAttemptProgressed: what counts as getting somewhere. A failure that
// persists (the same SQLSTATE again, nothing committed) must keep the
// backoff growing even though each attempt reaches the old database.
func TestAttemptProgressed(t *testing.T) {
	diskFull := &pgconn.PgError{Code: "53100", Message: "could not extend file"}
	tests := []struct {
		name            string
		settled, worked bool
		err             error
		previous        error
		ran             time.Duration
		want            bool
	}{
		{"failed before settling", false, false, errors.New("connection refused"), nil, time.Second, false},
		{"rows committed", true, true, diskFull, diskFull, time.Second, true},
		{"ran a minute", false, false, diskFull, diskFull, 2 * time.Minute, true},
		{"settled, then a link cut", true, false, errors.New("receive from source: EOF"), nil, time.Second, true},
		{"settled, the same database error again", true, false, diskFull, diskFull, time.Second, false},
		{"settled, a new database error", true, false, diskFull, &pgconn.PgError{Code: "57P01"}, time.Second, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a attempt
			a.progressed(tt.previous, 0)
			a.reset()
			a.settled.Store(tt.settled)
			a.worked.Store(tt.worked)
			if got := a.progressed(fmt.Errorf("apply: %w", tt.err), tt.ran); got != tt.want {
				t.Fatalf("progressed = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestResourceHint: a full disk is retried, so the log must say which
// database and what to do.
func TestResourceHint(t *testing.T) {
	full := &pgconn.PgError{Code: "53100", Message: "could not extend file"}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"new database full", &sink.ApplyError{Err: full}, "the new database is out of disk space"},
		{"old database full", fmt.Errorf("backfill public.orders: %w", full), "the old database is out of disk space"},
		{"too many connections", fmt.Errorf("connect to target database: %w", &pgconn.PgError{Code: "53300"}), "the new database has no free connection slot"},
		{"not a resource", &pgconn.PgError{Code: "23505"}, ""},
		{"not a database error", errors.New("conn closed"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := resourceHint(tt.err); !strings.HasPrefix(got, tt.want) || (tt.want == "") != (got == "") {
				t.Fatalf("resourceHint = %q, want prefix %q", got, tt.want)
			}
		})
	}
}
