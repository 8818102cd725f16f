package pipeline_test

import (
	"context"
	"fmt"
	"math/rand"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tandem-migrate/tandem/internal/testkit"
	"github.com/tandem-migrate/tandem/pkg/config"
)

// TestBackfillDirectCopy copies a table whose mapping needs no transform,
// so fresh key ranges go straight in with COPY, while the stream inserts
// into ranges not copied yet (forcing the staged upsert for those chunks),
// deletes and re-inserts keys, and updates rows. Both paths must run and
// the result must equal the source.
func TestBackfillDirectCopy(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	ddl := `CREATE TABLE plain (id bigint PRIMARY KEY, name text, amount numeric(12,2), at timestamptz, doc jsonb)`
	if _, err := src.Exec(ctx, ddl); err != nil {
		t.Fatal(err)
	}
	if _, err := tgt.Exec(ctx, ddl); err != nil {
		t.Fatal(err)
	}
	rows := 60000
	if _, err := src.Exec(ctx, `INSERT INTO plain SELECT g, CASE WHEN g % 7 = 0 THEN '' WHEN g % 11 = 0 THEN NULL ELSE 'n' || g END,
		g / 3.0, '2024-01-01'::timestamptz + g * interval '1 s', jsonb_build_object('g', g) FROM generate_series(1, $1::int) g`, rows); err != nil {
		t.Fatal(err)
	}
	cfg := env.Config("direct")
	cfg.Tables = []config.TableConfig{{Source: "public.plain", Target: "public.plain"}, {Source: "public.marker", Target: "public.marker"}}
	on := true
	cfg.Backfill.Enabled = &on
	cfg.Backfill.ChunkRows = 1000
	cfg.Backfill.RowsPerSecond = float64(rows / 4)
	r := startConfig(t, cfg)
	stop := make(chan struct{})
	werr := make(chan error, 1)
	go func() {
		conn := testkit.Connect(t, env.SourceDSN)
		r := rand.New(rand.NewSource(51))
		for {
			select {
			case <-stop:
				werr <- nil
				return
			default:
			}
			id := 1 + r.Int63n(int64(rows))
			var err error
			switch r.Intn(3) {
			case 0:
				if _, err = conn.Exec(ctx, `DELETE FROM plain WHERE id = $1`, id); err == nil {
					_, err = conn.Exec(ctx, `INSERT INTO plain (id, name) VALUES ($1, 'reborn') ON CONFLICT DO NOTHING`, id)
				}
			case 1:
				_, err = conn.Exec(ctx, `UPDATE plain SET amount = amount + 1, doc = doc || '{"u": 1}' WHERE id = $1`, id)
			default:
				_, err = conn.Exec(ctx, `DELETE FROM plain WHERE id = $1`, id)
			}
			if err != nil {
				werr <- err
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	testkit.WaitBackfill(t, tgt, cfg.Name, 2, 3*time.Minute)
	close(stop)
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, time.Minute)
	q := `SELECT id, name, amount, at, doc FROM plain ORDER BY id`
	var diffs []string
	sr, err := src.Query(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for sr.Next() {
		v, _ := sr.Values()
		want = append(want, fmt.Sprint(v))
	}
	tr, err := tgt.Query(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for tr.Next() {
		v, _ := tr.Values()
		got = append(got, fmt.Sprint(v))
	}
	if len(want) != len(got) {
		diffs = append(diffs, fmt.Sprintf("%d rows on the source, %d on the target", len(want), len(got)))
	}
	for i := 0; i < len(want) && i < len(got) && len(diffs) < 5; i++ {
		if want[i] != got[i] {
			diffs = append(diffs, fmt.Sprintf("want %s\n got %s", want[i], got[i]))
		}
	}
	if len(diffs) > 0 {
		t.Fatalf("plain differs:\n%v", diffs)
	}
	copied := testutil.ToFloat64(r.p.BackfillMetrics().Chunks.WithLabelValues("public.plain -> public.plain", "copy"))
	upserted := testutil.ToFloat64(r.p.BackfillMetrics().Chunks.WithLabelValues("public.plain -> public.plain", "upsert"))
	t.Logf("chunks: %v by COPY, %v by staged upsert", copied, upserted)
	if copied == 0 || upserted == 0 {
		t.Fatalf("want both paths exercised: copy %v, upsert %v", copied, upserted)
	}
}
