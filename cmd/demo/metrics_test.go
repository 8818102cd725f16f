package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseMetrics(t *testing.T) {
	text := `# HELP tandem_backfill_rows_total Rows copied by the backfill.
# TYPE tandem_backfill_rows_total counter
tandem_backfill_rows_total{table="public.customers -> public.customers"} 5000
tandem_backfill_rows_total{table="public.orders -> public.orders_v2"} 45000
tandem_backfill_estimated_rows{table="public.customers -> public.customers"} 5000
tandem_backfill_estimated_rows{table="public.orders -> public.orders_v2"} 200000
tandem_backfill_done{table="public.customers -> public.customers"} 1
tandem_replication_lag_bytes 1536
odd{a="x \"quoted\", y}",b="2"} 3 1700000000000
tandem_replication_lag_seconds 0.25
`
	m, err := parseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.sum("tandem_backfill_rows_total"); got != 50000 {
		t.Errorf("rows sum = %v, want 50000", got)
	}
	if got := m.sum("tandem_replication_lag_seconds"); got != 0.25 {
		t.Errorf("lag seconds = %v, want 0.25", got)
	}
	if got := m.by("odd", "a")[`x "quoted", y}`]; got != 3 {
		t.Errorf("escaped label: %v, samples %+v", got, m["odd"])
	}

	var b backfillState
	if b.update(m) {
		t.Fatal("complete while orders is not done")
	}
	if got, want := b.progress(), "customers done, orders 22%"; got != want {
		t.Errorf("progress = %q, want %q", got, want)
	}
	m["tandem_backfill_done"] = append(m["tandem_backfill_done"],
		sample{labels: map[string]string{"table": "public.orders -> public.orders_v2"}, value: 1})
	b.started = b.started.Add(-time.Second)
	if !b.update(m) || b.progress() != "customers done, orders done" {
		t.Errorf("not complete once every table is done: %q", b.progress())
	}
}

// Since cutover and rollback, both stream directions export the same
// metrics, told apart by a direction label: the backfill and the lag must
// be read from one direction, not summed over both.
func TestMetricsByDirection(t *testing.T) {
	text := `tandem_phase{phase="cutover"} 1
tandem_phase{phase="forward"} 0
tandem_replication_lag_seconds{direction="forward"} 0.5
tandem_replication_lag_seconds{direction="reverse"} 2
tandem_backfill_estimated_rows{direction="forward",table="public.orders -> public.orders_v2"} 100
tandem_backfill_done{direction="forward",table="public.orders -> public.orders_v2"} 1
tandem_backfill_estimated_rows{direction="reverse",table="public.orders_v2 -> public.orders"} 100
tandem_backfill_done{direction="reverse",table="public.orders_v2 -> public.orders"} 0
`
	m, err := parseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.phase(); got != "cutover" {
		t.Errorf("phase = %q, want cutover", got)
	}
	if got := m.direction("reverse").sum("tandem_replication_lag_seconds"); got != 2 {
		t.Errorf("reverse lag = %v, want 2", got)
	}
	if got := m.direction("forward").phase(); got != "cutover" {
		t.Errorf("the phase has no direction and must survive the filter: %q", got)
	}
	var b backfillState
	if !b.update(m) {
		t.Errorf("the forward backfill is done; the reverse direction's gauges must not hold it back: %q", b.progress())
	}
	if metrics(nil).phase() != "" {
		t.Error("phase of an older tandem without tandem_phase should be empty")
	}
}
