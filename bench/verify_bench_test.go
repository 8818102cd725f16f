package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/verify"
)

// BenchmarkVerify times `tandem verify` on a 1,000,000-row table (old and
// new schema on two clusters, a rename and a CASE-to-enum transform) against
// a plain full comparison: both sides dumped sorted by key with COPY (SELECT
// ... ORDER BY id) TO STDOUT and compared line by line in Go, streaming.
// Both run on equal tables, then verify once more with one damaged row, to
// show what finding a difference costs.
//
// The table is built once per process: the framework calls a benchmark
// again when -benchtime asks for more iterations, and reloading 1M rows
// per call would measure the loader.
//
// Run alone with: go test -run '^$' -bench Verify -benchtime 1x ./bench/
func BenchmarkVerify(b *testing.B) {
	rows := 1_000_000
	if testing.Short() {
		rows = 100_000
	}
	e := vfSetup(b, rows)
	ctx := b.Context()
	b.ResetTimer()
	var res vfResult
	for i := 0; i < b.N; i++ {
		res = e.measure(b, ctx)
	}
	b.StopTimer()
	b.ReportMetric(float64(rows), "rows")
	b.ReportMetric(res.verify.Seconds(), "verify-s")
	b.ReportMetric(res.full.Seconds(), "fullcompare-s")
	b.ReportMetric(res.full.Seconds()/res.verify.Seconds(), "fullcompare/verify")
	b.ReportMetric(res.damaged.Seconds(), "verify-1diff-s")
	b.ReportMetric(float64(res.wireFull)/float64(res.wireVerify), "fullcompare/verify-bytes")
	fmt.Printf("\n--- verify %d rows: verify %.2fs (%.1f MB over the wire), full sorted-dump comparison %.2fs (%.1f MB), ratio %.2f; verify with 1 damaged row %.2fs ---\n",
		rows, res.verify.Seconds(), float64(res.wireVerify)/1e6, res.full.Seconds(), float64(res.wireFull)/1e6,
		res.full.Seconds()/res.verify.Seconds(), res.damaged.Seconds())
}

const vfSourceSchema = `
CREATE TABLE accounts (
	id          bigint PRIMARY KEY,
	full_name   text NOT NULL,
	status_code int NOT NULL,
	balance     numeric(12,2) NOT NULL,
	created_at  timestamptz NOT NULL,
	doc         jsonb,
	tags        text[],
	note        text
);
INSERT INTO accounts
SELECT g, 'user ' || g, g % 3 + 1, (g % 100000) / 100.0, '2024-01-01'::timestamptz + g * interval '1 second',
       jsonb_build_object('n', g, 'nested', jsonb_build_object('k', g % 7)),
       ARRAY['t' || (g % 5), 'x'], CASE WHEN g % 4 = 0 THEN NULL ELSE 'note ' || g END
FROM generate_series(1, $ROWS) g;
ANALYZE accounts;`

const vfTargetSchema = `
CREATE TYPE account_status AS ENUM ('active', 'suspended', 'closed');
CREATE TABLE accounts_v2 (
	id          bigint PRIMARY KEY,
	name        text NOT NULL,
	status      account_status NOT NULL,
	balance     numeric(12,2) NOT NULL,
	created_at  timestamptz NOT NULL,
	doc         jsonb,
	tags        text[],
	note        text
);
INSERT INTO accounts_v2
SELECT g, 'user ' || g, (ARRAY['active', 'suspended', 'closed'])[g % 3 + 1]::account_status, (g % 100000) / 100.0,
       '2024-01-01'::timestamptz + g * interval '1 second',
       jsonb_build_object('n', g, 'nested', jsonb_build_object('k', g % 7)),
       ARRAY['t' || (g % 5), 'x'], CASE WHEN g % 4 = 0 THEN NULL ELSE 'note ' || g END
FROM generate_series(1, $ROWS) g;
ANALYZE accounts_v2;`

// The baseline reads what verify compares, computed the same way, but
// ships every row.
const (
	vfFullSource = `SELECT id, full_name, CASE status_code WHEN 1 THEN 'active' WHEN 2 THEN 'suspended' ELSE 'closed' END,
	balance, created_at, doc, tags, note FROM accounts ORDER BY id`
	vfFullTarget = `SELECT id, name, status::text, balance, created_at, doc, tags, note FROM accounts_v2 ORDER BY id`
)

type vfEnv struct {
	src, tgt *pgcluster.Cluster
	cfg      *config.Config
	rows     int
}

type vfResult struct {
	verify, full, damaged time.Duration
	wireVerify, wireFull  int64
}

var vfCached *vfEnv

func vfSetup(b *testing.B, rows int) *vfEnv {
	b.Helper()
	if vfCached != nil && vfCached.rows == rows {
		return vfCached
	}
	ctx := b.Context()
	src := pgcluster.ForTest(b, pgcluster.Options{Name: "verify-old"})
	tgt := pgcluster.ForTest(b, pgcluster.Options{Name: "verify-new"})
	load := func(c *pgcluster.Cluster, schema string) {
		sql := string(bytes.ReplaceAll([]byte(schema), []byte("$ROWS"), []byte(fmt.Sprint(rows))))
		if err := c.Exec(ctx, "postgres", sql); err != nil {
			b.Fatal(err)
		}
	}
	start := time.Now()
	load(src, vfSourceSchema)
	load(tgt, vfTargetSchema)
	fmt.Printf("\n--- verify bench: loaded %d rows on each side in %.1fs ---\n", rows, time.Since(start).Seconds())
	cfg := &config.Config{
		Name:   "verifybench",
		Source: config.SourceConfig{DSN: src.DSN("postgres"), Slot: "verifybench", Publication: "verifybench"},
		Target: config.TargetConfig{DSN: tgt.DSN("postgres")},
		Tables: []config.TableConfig{{
			Source: "public.accounts", Target: "public.accounts_v2",
			Columns: map[string]string{
				"name":   "full_name",
				"status": "CASE status_code WHEN 1 THEN 'active' WHEN 2 THEN 'suspended' ELSE 'closed' END",
			},
		}},
	}
	cfg.ApplyDefaults()
	vfCached = &vfEnv{src: src, tgt: tgt, cfg: cfg, rows: rows}
	return vfCached
}

func (e *vfEnv) measure(b *testing.B, ctx context.Context) vfResult {
	var r vfResult
	var err error
	if r.verify, r.wireVerify, err = e.runVerify(ctx, 0); err != nil {
		b.Fatal(err)
	}
	if r.full, r.wireFull, err = e.fullCompare(ctx); err != nil {
		b.Fatal(err)
	}
	if err := e.tgt.Exec(ctx, "postgres", `UPDATE accounts_v2 SET note = 'damaged' WHERE id = 777`); err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := e.tgt.Exec(context.WithoutCancel(ctx), "postgres", `UPDATE accounts_v2 SET note = 'note 777' WHERE id = 777`); err != nil {
			b.Error(err)
		}
	}()
	if r.damaged, _, err = e.runVerify(ctx, 1); err != nil {
		b.Fatal(err)
	}
	return r
}

// runVerify runs verify with its defaults, checks the verdict and counts
// the bytes the servers sent.
func (e *vfEnv) runVerify(ctx context.Context, wantDiffs int64) (time.Duration, int64, error) {
	var wire atomic.Int64
	src, err := vfConnect(ctx, e.cfg.Source.DSN, &wire)
	if err != nil {
		return 0, 0, err
	}
	defer src.Close(ctx)
	tgt, err := vfConnect(ctx, e.cfg.Target.DSN, &wire)
	if err != nil {
		return 0, 0, err
	}
	defer tgt.Close(ctx)
	wire.Store(0)
	start := time.Now()
	rep, err := verify.Run(ctx, e.cfg, src, tgt, verify.Options{}, slog.New(slog.DiscardHandler))
	elapsed := time.Since(start)
	if err != nil {
		return 0, 0, err
	}
	tr := rep.Tables[0]
	if tr.Compared != int64(e.rows) || tr.Diffs() != wantDiffs {
		return 0, 0, fmt.Errorf("verify compared %d rows with %d differences, want %d and %d", tr.Compared, tr.Diffs(), e.rows, wantDiffs)
	}
	return elapsed, wire.Load(), nil
}

// vfConnect opens a verify connection whose socket counts bytes read.
func vfConnect(ctx context.Context, dsn string, read *atomic.Int64) (*pgx.Conn, error) {
	cc, err := verify.ConnConfig(dsn)
	if err != nil {
		return nil, err
	}
	dial := cc.DialFunc
	cc.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &vfCountingConn{Conn: c, read: read}, nil
	}
	return pgx.ConnectConfig(ctx, cc)
}

type vfCountingConn struct {
	net.Conn
	read *atomic.Int64
}

func (c *vfCountingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

// fullCompare dumps both tables sorted by key and compares them as they
// stream, holding one line per side in memory.
func (e *vfEnv) fullCompare(ctx context.Context) (time.Duration, int64, error) {
	src, err := verify.Connect(ctx, e.cfg.Source.DSN)
	if err != nil {
		return 0, 0, err
	}
	defer src.Close(ctx)
	tgt, err := verify.Connect(ctx, e.cfg.Target.DSN)
	if err != nil {
		return 0, 0, err
	}
	defer tgt.Close(ctx)
	start := time.Now()
	srcLines, srcErr := vfDump(ctx, src, vfFullSource)
	tgtLines, tgtErr := vfDump(ctx, tgt, vfFullTarget)
	var rows, diffs, bytesRead int64
	for {
		a, okA := <-srcLines
		c, okB := <-tgtLines
		if !okA && !okB {
			break
		}
		rows++
		bytesRead += int64(len(a) + len(c))
		if okA != okB || a != c {
			diffs++
		}
	}
	for _, ch := range []chan error{srcErr, tgtErr} {
		if err := <-ch; err != nil {
			return 0, 0, err
		}
	}
	elapsed := time.Since(start)
	if rows != int64(e.rows) || diffs != 0 {
		return 0, 0, fmt.Errorf("full comparison saw %d rows and %d differences, want %d and 0", rows, diffs, e.rows)
	}
	return elapsed, bytesRead, nil
}

// vfDump streams COPY (query) TO STDOUT as lines.
func vfDump(ctx context.Context, conn *pgx.Conn, query string) (chan string, chan error) {
	lines := make(chan string, 4096)
	errc := make(chan error, 1)
	pr, pw := io.Pipe()
	go func() {
		_, err := conn.PgConn().CopyTo(ctx, pw, "COPY ("+query+") TO STDOUT")
		pw.CloseWithError(err)
	}()
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<26)
		for sc.Scan() {
			lines <- sc.Text()
		}
		errc <- sc.Err()
	}()
	return lines, errc
}
