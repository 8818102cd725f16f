package pipeline_test

import (
	"context"
	"fmt"
	"math/rand"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tandem-migrate/tandem/internal/testkit"
	"github.com/tandem-migrate/tandem/pkg/config"
)

// TestBackfillDirectCopy copies a table whose mapping needs no transform,
// so fresh key ranges go straight in with COPY, while the stream inserts
// into ranges not copied yet (forcing the staged upsert for those chunks),
// deletes and re-inserts keys, and updates rows. Both paths must run and
// the result must equal the source, in both formats rows travel in:
// binary when every column has a built-in type, text otherwise (an enum's
// OID differs between the servers).
func TestBackfillDirectCopy(t *testing.T) {
	for _, tc := range []struct {
		format string
		types  string // CREATE TYPE statements run on both sides
		extra  string // extra columns
		fill   string // their values, from g
	}{
		{format: "binary",
			extra: `, small int2, flag bool, ratio float8, tags int4[], raw bytea, uid uuid, span interval, code varchar(20), fixed char(4), words text[]`,
			fill: `, (g % 30000)::int2, g % 2 = 0, CASE g % 5 WHEN 0 THEN 'NaN'::float8 WHEN 1 THEN '-Infinity' ELSE g / 7.0 END,
				ARRAY[g, NULL, -g], decode(md5(g::text), 'hex'), md5(g::text)::uuid, g * interval '1 min', 'c' || g, 'x',
				ARRAY['a b', E'tab\there', NULL, 'q"uote', E'back\\slash', 'NULL']`},
		{format: "text",
			types: `CREATE TYPE plain_mood AS ENUM ('sad', 'ok', 'happy')`,
			extra: `, feeling plain_mood, note text`,
			fill:  `, (ARRAY['sad','ok','happy'])[1 + g % 3]::plain_mood, E'line\nbreak\tand \\ slash'`},
	} {
		t.Run(tc.format, func(t *testing.T) { testBackfillDirectCopy(t, tc.format, tc.types, tc.extra, tc.fill) })
	}
}

func testBackfillDirectCopy(t *testing.T, format, types, extra, fill string) {
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	ddl := `CREATE TABLE plain (id bigint PRIMARY KEY, name text, amount numeric(12,2), at timestamptz, doc jsonb` + extra + `)`
	for _, c := range []*pgx.Conn{src, tgt} {
		if types != "" {
			if _, err := c.Exec(ctx, types); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.Exec(ctx, ddl); err != nil {
			t.Fatal(err)
		}
	}
	rows := 60000
	if _, err := src.Exec(ctx, `INSERT INTO plain SELECT g, CASE WHEN g % 7 = 0 THEN '' WHEN g % 11 = 0 THEN NULL ELSE 'n' || g END,
		g / 3.0, '2024-01-01'::timestamptz + g * interval '1 s', jsonb_build_object('g', g)`+fill+` FROM generate_series(1, $1::int) g`, rows); err != nil {
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
	q := `SELECT p::text FROM plain p ORDER BY id`
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
	copied := testutil.ToFloat64(r.p.BackfillMetrics().Chunks.WithLabelValues("public.plain -> public.plain", "copy", format))
	upserted := testutil.ToFloat64(r.p.BackfillMetrics().Chunks.WithLabelValues("public.plain -> public.plain", "upsert", format))
	t.Logf("chunks in %s: %v by COPY, %v by staged upsert", format, copied, upserted)
	if copied == 0 || upserted == 0 {
		t.Fatalf("want both paths exercised in %s: copy %v, upsert %v", format, copied, upserted)
	}
}
