package pipeline_test

import (
	"context"
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
	conn := testkit.Connect(t, env.SourceDSN)
	go func() {
		werr <- testkit.ChurnByKey(ctx, conn, 51, int64(rows), []string{
			`WITH d AS (DELETE FROM plain WHERE id = $1) INSERT INTO plain (id, name) VALUES ($1, 'reborn') ON CONFLICT DO NOTHING`,
			`UPDATE plain SET amount = amount + 1, doc = doc || '{"u": 1}' WHERE id = $1`,
			`DELETE FROM plain WHERE id = $1`,
		}, 2*time.Millisecond, stop)
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
	testkit.SameTable(t, src, tgt, "plain", "id")
	copied := testutil.ToFloat64(r.p.BackfillMetrics().Chunks.WithLabelValues("public.plain -> public.plain", "copy", format))
	upserted := testutil.ToFloat64(r.p.BackfillMetrics().Chunks.WithLabelValues("public.plain -> public.plain", "upsert", format))
	t.Logf("chunks in %s: %v by COPY, %v by staged upsert", format, copied, upserted)
	if copied == 0 || upserted == 0 {
		t.Fatalf("want both paths exercised in %s: copy %v, upsert %v", format, copied, upserted)
	}
}
