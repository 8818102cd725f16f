package pipeline_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tandem-migrate/tandem/internal/testkit"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/pipeline"
)

// TestBackfillKeyShapes copies tables whose keys page in different ways:
// composite (int, text), uuid, text with a collation-sensitive order,
// sparse and skewed integers, one row, and none, while rows are deleted,
// re-inserted and inserted between the chunks.
func TestBackfillKeyShapes(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	tables := []struct{ name, ddl, seed, churn string }{
		{"composite", `CREATE TABLE composite (tenant int, code text, v text, PRIMARY KEY (tenant, code))`,
			`INSERT INTO composite SELECT g % 7, 'c' || (g * 37 % 1000), 'v' || g FROM generate_series(1, 3000) g ON CONFLICT DO NOTHING`,
			`DELETE FROM composite WHERE tenant = 3 AND code LIKE 'c1%'; INSERT INTO composite VALUES (3, 'c10', 'again'), (9, 'zz', 'new') ON CONFLICT DO NOTHING`},
		{"uuidkey", `CREATE TABLE uuidkey (id uuid PRIMARY KEY, v int)`,
			`INSERT INTO uuidkey SELECT md5(g::text)::uuid, g FROM generate_series(1, 3000) g`,
			`UPDATE uuidkey SET v = -v WHERE v % 5 = 0; DELETE FROM uuidkey WHERE v % 7 = 0`},
		{"textkey", `CREATE TABLE textkey (k text PRIMARY KEY, v int)`,
			`INSERT INTO textkey SELECT (ARRAY['a','B','ä','Z','_','1'])[1 + g % 6] || g, g FROM generate_series(1, 3000) g`,
			`DELETE FROM textkey WHERE v % 3 = 0; INSERT INTO textkey VALUES ('ä3', 1), ('new', 2) ON CONFLICT DO NOTHING`},
		{"sparse", `CREATE TABLE sparse (id bigint PRIMARY KEY, v int)`,
			`INSERT INTO sparse SELECT CASE WHEN g < 2900 THEN g ELSE g::bigint * 1000000000000 END, g FROM generate_series(1, 3000) g`,
			`DELETE FROM sparse WHERE id > 1000000000000 AND v % 2 = 0; INSERT INTO sparse VALUES (-5, 1), (2900 * 1000000000000::bigint + 1, 2)`},
		{"onerow", `CREATE TABLE onerow (id int PRIMARY KEY, v text)`, `INSERT INTO onerow VALUES (1, 'only')`, `UPDATE onerow SET v = 'changed'`},
		{"norows", `CREATE TABLE norows (id int PRIMARY KEY, v text)`, ``, `INSERT INTO norows VALUES (1, 'late')`},
	}
	cfg := env.Config("keys")
	cfg.Tables = nil
	for _, tb := range tables {
		for _, c := range []*pgx.Conn{src, tgt} {
			if _, err := c.Exec(ctx, tb.ddl); err != nil {
				t.Fatal(err)
			}
		}
		if tb.seed != "" {
			if _, err := src.Exec(ctx, tb.seed); err != nil {
				t.Fatal(err)
			}
		}
		cfg.Tables = append(cfg.Tables, config.TableConfig{Source: "public." + tb.name, Target: "public." + tb.name})
	}
	cfg.Tables = append(cfg.Tables, config.TableConfig{Source: "public.marker", Target: "public.marker"})
	on := true
	cfg.Backfill.Enabled = &on
	cfg.Backfill.ChunkRows = 97 // many chunks, boundaries inside every key shape
	cfg.Backfill.Workers = 3
	cfg.Backfill.RowsPerSecond = 6000
	r := startConfig(t, cfg)
	testkit.WaitSlot(t, src, "keys", time.Minute)
	for _, tb := range tables {
		if _, err := src.Exec(ctx, tb.churn); err != nil {
			t.Fatalf("%s: %v", tb.name, err)
		}
	}
	testkit.WaitBackfill(t, tgt, cfg.Name, len(cfg.Tables), 3*time.Minute, r.alive)
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, time.Minute, r.alive)
	for _, tb := range tables {
		q := fmt.Sprintf(`SELECT COALESCE(string_agg(t::text, '|' ORDER BY t::text COLLATE "C"), '') FROM %s t`, tb.name)
		var want, got string
		if err := src.QueryRow(ctx, q).Scan(&want); err != nil {
			t.Fatal(err)
		}
		if err := tgt.QueryRow(ctx, q).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if want != got {
			t.Errorf("%s differs: %d source rows, %d target rows", tb.name, strings.Count(want, "|")+1, strings.Count(got, "|")+1)
		}
	}
}

// TestBackfillNeedsAKey: a table that streams fine (REPLICA IDENTITY FULL)
// but has no key to page by is refused at startup, naming the table and
// the fix, before anything is written.
func TestBackfillNeedsAKey(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	for _, c := range []string{env.SourceDSN, env.TargetDSN} {
		if _, err := testkit.Connect(t, c).Exec(ctx, `CREATE TABLE nokey (a int, b text)`); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := testkit.Connect(t, env.SourceDSN).Exec(ctx, `ALTER TABLE nokey REPLICA IDENTITY FULL`); err != nil {
		t.Fatal(err)
	}
	if _, err := testkit.Connect(t, env.TargetDSN).Exec(ctx, `ALTER TABLE nokey ADD PRIMARY KEY (a)`); err != nil {
		t.Fatal(err)
	}
	cfg := env.Config("nokey")
	cfg.Tables = []config.TableConfig{{Source: "public.nokey", Target: "public.nokey"}}
	on := true
	cfg.Backfill.Enabled = &on
	_, err := pipeline.Preflight(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "public.nokey") || !strings.Contains(err.Error(), "primary key") {
		t.Fatalf("want a refusal naming public.nokey and the primary key fix, got %v", err)
	}
	off := false
	cfg.Backfill.Enabled = &off
	if _, err := pipeline.Preflight(ctx, cfg); err != nil {
		t.Fatalf("stream-only needs no source key with REPLICA IDENTITY FULL: %v", err)
	}
}

// TestBackfillChunkBytes: rows wide enough that chunk_rows of them would
// be a huge chunk are cut by chunk_bytes, and the table still arrives
// whole (a chunk ended by bytes is not mistaken for the last one).
func TestBackfillChunkBytes(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	ddl := `CREATE TABLE wide (id int PRIMARY KEY, blob text)`
	for _, c := range []*pgx.Conn{src, tgt} {
		if _, err := c.Exec(ctx, ddl); err != nil {
			t.Fatal(err)
		}
	}
	const rows, rowBytes, chunkBytes = 120, 100_000, 1 << 20
	if _, err := src.Exec(ctx, `INSERT INTO wide SELECT g, (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, $1::int / 32) i) FROM generate_series(1, $2::int) g`, rowBytes, rows); err != nil {
		t.Fatal(err)
	}
	cfg := env.Config("wide")
	cfg.Tables = []config.TableConfig{{Source: "public.wide", Target: "public.wide"}, {Source: "public.marker", Target: "public.marker"}}
	on := true
	cfg.Backfill.Enabled = &on
	cfg.Backfill.ChunkRows = 1000 // all rows in one chunk, were it not for the bytes
	cfg.Backfill.ChunkBytes = chunkBytes
	r := startConfig(t, cfg)
	testkit.WaitBackfill(t, tgt, cfg.Name, len(cfg.Tables), 3*time.Minute, r.alive)
	testkit.SameTable(t, src, tgt, "wide", "id")
	m := r.p.BackfillMetrics()
	var chunks float64
	for _, path := range []string{"copy", "upsert"} {
		chunks += testutil.ToFloat64(m.Chunks.WithLabelValues("public.wide -> public.wide", path, "binary"))
	}
	// Each chunk holds at most ceil(chunkBytes/rowBytes) = 11 rows.
	if least := float64(rows*rowBytes/chunkBytes) - 1; chunks < least {
		t.Fatalf("%v chunks, want at least %v: chunk_bytes did not cut them", chunks, least)
	}
	t.Logf("%d rows of %d bytes in %v chunks", rows, rowBytes, chunks)
}
