package verify

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tandem-migrate/tandem/pkg/checkpoint"
)

// TestShadowMetrics runs the shadow over a damaged target until it has
// completed a pass and checks what it exports. The stream is not running;
// its checkpoint is set beyond any source position, as a stream that has
// caught up would leave it, so live re-checks proceed at once.
func TestShadowMetrics(t *testing.T) {
	c := cluster(t)
	src, clean := setupAccounts(t, c, 300)
	tgt := cloneDB(t, c, clean)
	ctx := context.Background()
	damage := `UPDATE accounts_v2 SET name = 'x' WHERE id = 42; DELETE FROM accounts_v2 WHERE id = 43;`
	if err := c.Exec(ctx, tgt, damage); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(c, src, tgt, accountsMapping)
	conn := connectRW(t, c, tgt)
	if err := checkpoint.EnsureSchema(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO tandem.checkpoint (name, lsn) VALUES ($1, 'FFFFFFFF/FFFFFFFF')`, cfg.Name); err != nil {
		t.Fatal(err)
	}

	reg := prometheus.NewRegistry()
	sh, err := NewShadow(cfg, Options{ChunkRows: 40, RowsPerSecond: 100000}, reg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	done := make(chan error, 1)
	go func() { done <- sh.Run(runCtx) }()
	deadline := time.Now().Add(20 * time.Second)
	for len(sh.LastPass()) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	passes := sh.LastPass()
	if len(passes) != 1 {
		t.Fatal("no complete shadow pass within 20s")
	}
	checkDiffs(t, passes[0], []expect{{Different, "id=42", "name"}, {Missing, "id=43", ""}})

	m := gather(t, reg)
	table := "table=public.accounts_v2"
	wantRatio := 2 / float64(passes[0].Compared)
	if got := m["tandem_verify_divergence_ratio{"+table+"}"]; got != wantRatio {
		t.Errorf("divergence ratio %v, want %v", got, wantRatio)
	}
	if got := m["tandem_verify_rows_checked_total{"+table+"}"]; got < float64(passes[0].Compared) {
		t.Errorf("rows checked %v, want at least %d", got, passes[0].Compared)
	}
	// The shadow may have begun a second pass; counters grow per pass.
	for kind, want := range map[Kind]float64{Different: 1, Missing: 1, Extra: 0} {
		got := m["tandem_verify_mismatches_total{kind="+string(kind)+","+table+"}"]
		if got < want || (want == 0 && got != 0) {
			t.Errorf("mismatches{kind=%s} = %v, want %v per pass; all: %v", kind, got, want, m)
		}
	}
}

// gather flattens a registry into "name{label=value,...}" -> value.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			out[f.GetName()+"{"+strings.Join(labels, ",")+"}"] = metricValue(m)
		}
	}
	return out
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return 0
}
