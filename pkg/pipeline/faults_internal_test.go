package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

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
