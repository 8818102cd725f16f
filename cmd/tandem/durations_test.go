package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDurationsNeedAUnit: a bare number in a duration field is refused with
// the field's name and the fix, instead of being read as nanoseconds.
func TestDurationsNeedAUnit(t *testing.T) {
	const base = "source: {dsn: postgres://u@h/db, slot: s, publication: p}\ntarget: {dsn: postgres://u@h/db2}\ntables: [{source: public.a}]\n"
	tests := []struct {
		name string
		yaml string
		want []string      // each a whole line of the error; nil means it loads
		got  time.Duration // backfill.throttle_check_interval once loaded
	}{
		{"with a unit", "backfill: {throttle_check_interval: 250ms}\n", nil, 250 * time.Millisecond},
		{"quoted with a unit", "backfill: {throttle_check_interval: \"2s\"}\n", nil, 2 * time.Second},
		{"compound", "backfill: {throttle_check_interval: 1s500ms}\n", nil, 1500 * time.Millisecond},
		{"bare zero means the default", "backfill: {throttle_check_interval: 0}\n", nil, time.Second},
		{"bare int", "backfill: {throttle_check_interval: 1}\n",
			[]string{`backfill.throttle_check_interval: "1" has no unit; write 1s, 500ms or 2m`}, 0},
		{"bare float", "backfill: {throttle_check_interval: 1.5}\n",
			[]string{`backfill.throttle_check_interval: "1.5" has no unit; write 1s, 500ms or 2m`}, 0},
		{"numeric string", "backfill: {throttle_check_interval: \"30\"}\n",
			[]string{`backfill.throttle_check_interval: "30" has no unit; write 1s, 500ms or 2m`}, 0},
		{"negative bare number", "apply: {retry_min: -5}\n",
			[]string{`apply.retry_min: "-5" has no unit; write 1s, 500ms or 2m`}, 0},
		{"not a duration", "apply: {retry_max: soon}\n",
			[]string{`apply.retry_max: "soon" is not a duration; write 1s, 500ms or 2m`}, 0},
		{"unknown unit", "apply: {commit_interval: 5 seconds}\n",
			[]string{`apply.commit_interval: "5 seconds" is not a duration; write 1s, 500ms or 2m`}, 0},
		{"every bad field named", "apply: {retry_max: 30, shutdown_timeout: 10}\nbackfill: {max_lag: 30}\n",
			[]string{
				`apply.retry_max: "30" has no unit; write 1s, 500ms or 2m`,
				`apply.shutdown_timeout: "10" has no unit; write 1s, 500ms or 2m`,
				`backfill.max_lag: "30" has no unit; write 1s, 500ms or 2m`,
			}, 0},
		{"with a unit but out of bounds", "backfill: {throttle_check_interval: 1ns}\n",
			[]string{"backfill.throttle_check_interval: must be between 10ms and 1m, got 1ns"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "m.yaml")
			if err := os.WriteFile(path, []byte(base+tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := loadConfig(path)
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.Backfill.ThrottleCheckInterval != tt.got {
					t.Fatalf("throttle_check_interval = %v, want %v", cfg.Backfill.ThrottleCheckInterval, tt.got)
				}
				return
			}
			if err == nil {
				t.Fatalf("loaded; want an error naming %v", tt.want)
			}
			lines := strings.Split(err.Error(), "\n")
			if lines[0] != "config "+path+":" {
				t.Errorf("first line %q does not name the file", lines[0])
			}
			got := lines[1:]
			for i := range got {
				got[i] = strings.TrimSpace(got[i])
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("error lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}
