package backfill

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/checkpoint"
)

// TestProgressLine: rows include earlier runs, the rate is the last
// interval's, the ETA follows this run's average, and the percent never
// reaches 100 on an estimate.
func TestProgressLine(t *testing.T) {
	rows := prometheus.NewCounter(prometheus.CounterOpts{Name: "rows"})
	rows.Add(500) // another table's run earlier in this process: not this copy's
	j := &Job{Source: &catalog.Table{EstimatedRows: 10000}, Progress: checkpoint.Progress{RowsCopied: 2000}}
	t0 := time.Unix(1000, 0)
	p := newProgress(j, rows, t0)

	rows.Add(1000)
	got := fields(p.line(t0.Add(10*time.Second), "", 100))
	want := map[string]string{"rows_copied": "3000", "estimated_rows": "10000", "percent": "30.0", "rows_per_second": "100",
		"eta": "1m10s", "throttled": "no", "rate_cap": "100"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("first line: %s=%s, want %s (all: %v)", k, got[k], v, got)
		}
	}

	// Paused: nothing copied in the next interval.
	got = fields(p.line(t0.Add(20*time.Second), "paused", 0))
	if got["rows_per_second"] != "0" || got["throttled"] != "paused" || got["eta"] != "2m20s" || got["rate_cap"] != "" {
		t.Errorf("paused line: %v", got)
	}

	// Past the estimate: no 100% and no ETA until the table is done.
	rows.Add(20000)
	got = fields(p.line(t0.Add(30*time.Second), "", 0))
	if got["percent"] != "99.9" || got["eta"] != "unknown" {
		t.Errorf("past the estimate: %v", got)
	}

	unknown := newProgress(&Job{Source: &catalog.Table{EstimatedRows: -1}}, rows, t0)
	if got := fields(unknown.line(t0.Add(time.Second), "", 0)); got["percent"] != "unknown" || got["eta"] != "unknown" {
		t.Errorf("never analyzed table: %v", got)
	}
}

func fields(kv []any) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i].(string)] = fmt.Sprint(kv[i+1])
	}
	return m
}
