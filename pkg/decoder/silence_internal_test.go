package decoder

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestSilence: an idle link is asked for a reply after a third of
// receive_timeout and declared dead after all of it, counted from the
// last message.
func TestSilence(t *testing.T) {
	const timeout = 30 * time.Second
	tests := []struct {
		name       string
		quiet      time.Duration
		pinged     bool
		wantPinged bool
		wantDead   bool
	}{
		{"recent message", 5 * time.Second, false, false, false},
		{"a third of the timeout: ask for a reply", 10 * time.Second, false, true, false},
		{"asked already: do not ask again", 20 * time.Second, true, true, false},
		{"no answer within the timeout: dead", 30 * time.Second, true, true, true},
		{"dead even if the ask was missed", 45 * time.Second, false, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Flushed is 0, so the reply request is recorded but not sent.
			d := New(Options{ReceiveTimeout: timeout})
			now := time.Now()
			s := &stream{d: d, heard: now.Add(-tt.quiet), pinged: tt.pinged}
			err := s.checkSilence(context.Background(), now)
			var silent *SilentError
			if dead := errors.As(err, &silent); dead != tt.wantDead {
				t.Fatalf("dead = %v (%v), want %v", dead, err, tt.wantDead)
			}
			if !tt.wantDead && s.pinged != tt.wantPinged {
				t.Fatalf("pinged = %v, want %v", s.pinged, tt.wantPinged)
			}
		})
	}
}
