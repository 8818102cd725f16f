package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
	"github.com/tandem-migrate/tandem/pkg/checkpoint"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/control"
	"github.com/tandem-migrate/tandem/pkg/decoder"
)

// The backfill benchmark copies one realistic table from an old cluster to
// an identical empty table on a new one, with tandem and with the tools it
// is measured against. Everything lives in database "postgres" on both
// sides (streamDB), so pgbench in the impact phase loads the very database
// whose table is being copied, as an application would: its WAL then goes
// through tandem's walsender like the real thing.

// bfTableDDL is a typical business table: about 160 bytes a row in COPY
// text form, with text, numeric, timestamptz and jsonb, some NULLs.
const bfTableDDL = `CREATE TABLE %s (
	id         bigint PRIMARY KEY,
	account_id integer NOT NULL,
	sku        text NOT NULL,
	title      text,
	price      numeric(12,2),
	quantity   integer,
	created_at timestamptz NOT NULL,
	attrs      jsonb
)`

// bfSeedSQL fills rows $1..$2 on the server: generating them in Go would
// make the benchmark process's own memory and time part of the setup.
const bfSeedSQL = `INSERT INTO %s
SELECT g, g %% 5000, 'SKU-' || lpad(to_hex(g), 8, '0'),
	CASE WHEN g %% 17 = 0 THEN NULL ELSE 'item ' || g || ' ' || md5(g::text) END,
	CASE WHEN g %% 23 = 0 THEN NULL ELSE round((g %% 100000) / 7.0, 2) END,
	g %% 97,
	'2024-01-01 00:00:00+00'::timestamptz + g * interval '17 seconds',
	CASE WHEN g %% 5 = 0 THEN NULL ELSE jsonb_build_object('color', (ARRAY['red','green','blue','black'])[1 + g %% 4],
		'size', g %% 12, 'tags', jsonb_build_array('t' || g %% 50, 't' || g %% 7)) END
FROM generate_series($1::bigint, $2::bigint) g`

// bfColumns is the column list the plain COPY selects, so its source side
// does the same per-row work as tandem's chunk query.
const bfColumns = "id, account_id, sku, title, price, quantity, created_at, attrs"

// bfEnv is the old/new cluster pair of the backfill benchmark.
type bfEnv struct {
	old, new     *pgcluster.Cluster
	oldDB, newDB *pgx.Conn
	dir          string // scratch files: configs, logs, pgcopydb's work dir
	textBytes    int64  // size of the 1M table in COPY text form
	// quietLeft is what is left of the time the benchmark may spend
	// waiting for other people's load on the machine to pass.
	quietLeft time.Duration
	// bin builds the tandem binary once (phases impact and rss run it).
	bin *streamEnv
}

// bfQuietBudget bounds the total wait for a quiet machine in one run.
const bfQuietBudget = 3 * time.Minute

// waitQuiet waits, within the run's budget, until the machine's CPUs were
// nearly idle for a second. Between timed runs nothing of the benchmark is
// busy, so whatever is, is someone else's (a colleague's tests on a shared
// machine); starting a timed copy under it would measure their load.
func (e *bfEnv) waitQuiet() {
	for e.quietLeft > 0 {
		start := time.Now()
		busy := machineBusyTime()
		time.Sleep(time.Second)
		quiet := machineBusyTime()-busy < 150*time.Millisecond
		e.quietLeft -= time.Since(start)
		if quiet {
			return
		}
	}
}

// setupBackfillEnv starts both clusters with pg_stat_statements, creates
// the table on both and seeds rows on the old side.
func setupBackfillEnv(b *testing.B, table string, rows int64) *bfEnv {
	b.Helper()
	ctx := b.Context()
	// No checkpoint forced by max_wal_size may land inside one timed copy
	// and not another; pg_stat_statements says where the servers' time goes.
	opts := func(name string) pgcluster.Options {
		return pgcluster.Options{Name: name, Settings: map[string]string{
			"max_wal_size":             "8GB",
			"shared_preload_libraries": "pg_stat_statements",
			"pg_stat_statements.track": "top",
		}}
	}
	e := &bfEnv{old: pgcluster.ForTest(b, opts("bfold")), new: pgcluster.ForTest(b, opts("bfnew")), dir: b.TempDir(), quietLeft: bfQuietBudget}
	e.oldDB, e.newDB = benchConn(b, e.old), benchConn(b, e.new)
	for _, c := range []*pgx.Conn{e.oldDB, e.newDB} {
		if _, err := c.Exec(ctx, "CREATE EXTENSION pg_stat_statements"); err != nil {
			b.Fatalf("create pg_stat_statements: %v", err)
		}
	}
	start := time.Now()
	if err := e.createTable(ctx, table, rows); err != nil {
		b.Fatal(err)
	}
	if err := e.oldDB.QueryRow(ctx, `SELECT sum(length(t::text) + 1)::int8 FROM `+pgx.Identifier{table}.Sanitize()+` t`).Scan(&e.textBytes); err != nil {
		b.Fatalf("measure table: %v", err)
	}
	b.Logf("setup: %d rows seeded in %s", rows, time.Since(start).Round(100*time.Millisecond))
	return e
}

// createTable creates table on both sides and seeds rows on the old one.
func (e *bfEnv) createTable(ctx context.Context, table string, rows int64) error {
	ident := pgx.Identifier{table}.Sanitize()
	for side, c := range map[string]*pgx.Conn{"old": e.oldDB, "new": e.newDB} {
		if _, err := c.Exec(ctx, fmt.Sprintf(bfTableDDL, ident)); err != nil {
			return fmt.Errorf("create %s on the %s side: %w", table, side, err)
		}
	}
	if _, err := e.oldDB.Exec(ctx, fmt.Sprintf(bfSeedSQL, ident), 1, rows); err != nil {
		return fmt.Errorf("seed %s: %w", table, err)
	}
	// Hint bits set and statistics fresh now, so the first timed reader
	// does not pay for writing them.
	if _, err := e.oldDB.Exec(ctx, "VACUUM ANALYZE "+ident); err != nil {
		return fmt.Errorf("vacuum %s: %w", table, err)
	}
	return nil
}

// dropTable removes table on both sides (the 5M-row table is gigabytes).
func (e *bfEnv) dropTable(ctx context.Context, table string) error {
	ident := pgx.Identifier{table}.Sanitize()
	for side, c := range map[string]*pgx.Conn{"old": e.oldDB, "new": e.newDB} {
		if _, err := c.Exec(ctx, "DROP TABLE IF EXISTS "+ident); err != nil {
			return fmt.Errorf("drop %s on the %s side: %w", table, side, err)
		}
	}
	return nil
}

// reset gives every timed copy the same start: an empty target table,
// dirty buffers of the previous copy written out on both sides, and zeroed
// statement statistics.
func (e *bfEnv) reset(ctx context.Context, table string) error {
	if _, err := e.newDB.Exec(ctx, "TRUNCATE "+pgx.Identifier{table}.Sanitize()); err != nil {
		return fmt.Errorf("empty the target table: %w", err)
	}
	for _, c := range []*pgx.Conn{e.oldDB, e.newDB} {
		if _, err := c.Exec(ctx, "CHECKPOINT"); err != nil {
			return fmt.Errorf("checkpoint: %w", err)
		}
		if _, err := c.Exec(ctx, "SELECT pg_stat_statements_reset()"); err != nil {
			return fmt.Errorf("reset pg_stat_statements: %w", err)
		}
	}
	e.waitQuiet()
	return nil
}

// verify checks the target table holds exactly the source's rows: a fast
// copy of the wrong rows is no result.
func (e *bfEnv) verify(ctx context.Context, table string) error {
	oldD, err := digest(ctx, e.oldDB, []string{table})
	if err != nil {
		return fmt.Errorf("old side: %w", err)
	}
	newD, err := digest(ctx, e.newDB, []string{table})
	if err != nil {
		return fmt.Errorf("new side: %w", err)
	}
	if oldD[table] != newD[table] {
		return fmt.Errorf("%s differs after the copy: old has %d rows (hash %d), new has %d rows (hash %d)",
			table, oldD[table].rows, oldD[table].hash, newD[table].rows, newD[table].hash)
	}
	return nil
}

// bfCPU is CPU time used during one timed window, split by who used it.
// The machine is shared (other engineers' tests may run beside the
// benchmark), so Other says how much of it went to processes that are no
// part of the measurement: a large value means the figure is noisy.
type bfCPU struct {
	Old, New  time.Duration // every process of each cluster, exited backends included
	Roles     cpuUse        // the clusters' live processes by role (walsender...)
	Self      time.Duration // this process: the in-process pipeline, the pipe of plain COPY
	Children  time.Duration // pgcopydb, pgbench, a tandem subprocess
	Machine   time.Duration // all CPUs, busy time
	WallClock time.Duration
}

// Other is the CPU time of processes outside the benchmark.
func (c bfCPU) Other() time.Duration {
	return max(0, c.Machine-c.Old-c.New-c.Self-c.Children)
}

// bfCPUSample is a reading of the counters bfCPU is the difference of.
type bfCPUSample struct {
	at       time.Time
	roles    cpuSample
	old, new string // cluster names in roles
	pids     map[int]time.Duration
}

// sampleCPU reads the counters; pids are children still running
// (their time is not in RUSAGE_CHILDREN until they are reaped).
func (e *bfEnv) sampleCPU(pids ...int) bfCPUSample {
	s := bfCPUSample{at: time.Now(), roles: sampleCPU(e.old, e.new), old: e.old.Name(), new: e.new.Name(), pids: map[int]time.Duration{}}
	for _, pid := range pids {
		s.pids[pid] = procCPU(pid)
	}
	return s
}

// since is the CPU used from before to s. A child listed in both samples
// counts with its own time; one reaped in between is in RUSAGE_CHILDREN.
func (s bfCPUSample) since(before bfCPUSample) bfCPU {
	r, b := s.roles, before.roles
	c := bfCPU{
		Old: r.total(s.old) - b.total(s.old), New: r.total(s.new) - b.total(s.new),
		Roles: r.since(b), Self: r.self - b.self, Children: r.children - b.children,
		Machine: r.machine - b.machine, WallClock: s.at.Sub(before.at),
	}
	for pid, t := range s.pids {
		c.Children += t - before.pids[pid]
	}
	return c
}

// bfResult is one timed copy of a table.
type bfResult struct {
	Label   string
	Rows    int64
	Elapsed time.Duration
	CPU     bfCPU
	// TopOld and TopNew are the statements that took the most server time.
	TopOld, TopNew []bfStmtStat
	// PeakRSS is the tandem process's VmHWM (subprocess runs only).
	PeakRSS int64
}

func (r bfResult) RowsPerSec() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Rows) / r.Elapsed.Seconds()
}

// bfStmtStat is one pg_stat_statements row.
type bfStmtStat struct {
	Calls int64
	Total time.Duration
	Query string
}

// bfTopStatements reads where a server spent its execution time since the
// last reset, without the benchmark's own bookkeeping queries.
func bfTopStatements(ctx context.Context, conn *pgx.Conn, n int) ([]bfStmtStat, error) {
	rows, err := conn.Query(ctx, `SELECT calls, total_exec_time, left(regexp_replace(query, '\s+', ' ', 'g'), 90)
		FROM pg_stat_statements
		WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
			AND query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%tandem.backfill WHERE name%'
		ORDER BY total_exec_time DESC LIMIT $1`, n)
	if err != nil {
		return nil, fmt.Errorf("read pg_stat_statements: %w", err)
	}
	defer rows.Close()
	var out []bfStmtStat
	for rows.Next() {
		var s bfStmtStat
		var ms float64
		if err := rows.Scan(&s.Calls, &ms, &s.Query); err != nil {
			return nil, fmt.Errorf("read pg_stat_statements: %w", err)
		}
		s.Total = time.Duration(ms * float64(time.Millisecond))
		out = append(out, s)
	}
	return out, rows.Err()
}

// collectStats fills r's server statement breakdown.
func (e *bfEnv) collectStats(ctx context.Context, r *bfResult) error {
	var err error
	if r.TopOld, err = bfTopStatements(ctx, e.oldDB, 4); err != nil {
		return fmt.Errorf("old side: %w", err)
	}
	if r.TopNew, err = bfTopStatements(ctx, e.newDB, 5); err != nil {
		return fmt.Errorf("new side: %w", err)
	}
	return nil
}

// plainCopy streams SELECT output of the old side into the new side's
// table through one in-memory pipe: the floor any copier pays (one read,
// one parse, one insert per row, no transform, no keyset paging).
func (e *bfEnv) plainCopy(ctx context.Context, table, format string) (bfResult, error) {
	res := bfResult{Label: "plain COPY (" + format + ")"}
	if err := e.reset(ctx, table); err != nil {
		return res, err
	}
	ident := pgx.Identifier{table}.Sanitize()
	opts := ""
	if format == "binary" {
		opts = " (FORMAT binary)"
	}
	before := e.sampleCPU()
	start := time.Now()
	pr, pw := io.Pipe()
	sent := make(chan error, 1)
	go func() {
		// CopyTo writes each row on its own; through a bare pipe every row
		// would become one CopyData message and one socket write on the
		// receiving side. Buffering gives COPY the large messages it gets
		// from any real client (psql, libpq), so the baseline is not slowed
		// by the benchmark's plumbing.
		bw := bufio.NewWriterSize(pw, 256<<10)
		_, err := e.oldDB.PgConn().CopyTo(ctx, bw, fmt.Sprintf("COPY (SELECT %s FROM %s) TO STDOUT%s", bfColumns, ident, opts))
		if err == nil {
			err = bw.Flush()
		}
		pw.CloseWithError(err)
		sent <- err
	}()
	tag, err := e.newDB.PgConn().CopyFrom(ctx, pr, fmt.Sprintf("COPY %s (%s) FROM STDIN%s", ident, bfColumns, opts))
	// Unblocks the sender if the receiving side gave up early.
	pr.CloseWithError(errors.New("receiver stopped"))
	if serr := <-sent; serr != nil && err == nil {
		err = fmt.Errorf("read from the old side: %w", serr)
	}
	if err != nil {
		return res, fmt.Errorf("plain COPY: %w", err)
	}
	res.Elapsed = time.Since(start)
	res.CPU = e.sampleCPU().since(before)
	res.Rows = tag.RowsAffected()
	if err := e.collectStats(ctx, &res); err != nil {
		return res, err
	}
	return res, e.verify(ctx, table)
}

// pgcopydbCopy runs `pgcopydb copy table-data` for the one table into the
// existing empty target table and times the whole command, its catalog
// queries and snapshot export included (a few hundred milliseconds).
func (e *bfEnv) pgcopydbCopy(ctx context.Context, bin, table string, jobs int) (bfResult, error) {
	res := bfResult{Label: fmt.Sprintf("pgcopydb copy table-data (%d jobs)", jobs)}
	if err := e.reset(ctx, table); err != nil {
		return res, err
	}
	filters := filepath.Join(e.dir, "pgcopydb-filters.ini")
	if err := os.WriteFile(filters, []byte("[include-only-table]\npublic."+table+"\n"), 0o644); err != nil {
		return res, fmt.Errorf("write pgcopydb filters: %w", err)
	}
	work := filepath.Join(e.dir, "pgcopydb-work")
	if err := os.RemoveAll(work); err != nil {
		return res, fmt.Errorf("clean pgcopydb work dir: %w", err)
	}
	logPath := filepath.Join(e.dir, "pgcopydb.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return res, fmt.Errorf("pgcopydb log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.CommandContext(ctx, bin, "copy", "table-data",
		"--source", e.old.DSN(streamDB), "--target", e.new.DSN(streamDB),
		"--dir", work, "--table-jobs", fmt.Sprint(jobs), "--filters", filters)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// A developer's PG* variables must not point pgcopydb elsewhere; its
	// binaries (pg_dump for catalog work) come from the clusters' version.
	cmd.Env = append(cleanEnv("PG"), "PATH="+e.old.BinDir()+string(os.PathListSeparator)+os.Getenv("PATH"))
	before := e.sampleCPU()
	start := time.Now()
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(logPath)
		return res, fmt.Errorf("pgcopydb: %w\n%s", err, bfTail(string(out), 3000))
	}
	res.Elapsed = time.Since(start)
	res.CPU = e.sampleCPU().since(before)
	if err := e.newDB.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{table}.Sanitize()).Scan(&res.Rows); err != nil {
		return res, fmt.Errorf("count after pgcopydb: %w", err)
	}
	if err := e.collectStats(ctx, &res); err != nil {
		return res, err
	}
	return res, e.verify(ctx, table)
}

func bfTail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// bfRunOpts is one tandem backfill run.
type bfRunOpts struct {
	Table         string
	Slot          string // also the publication and the migration name
	ChunkRows     int
	Workers       int
	RowsPerSecond float64
	// StreamOnly runs tandem with the backfill off: the stream's own cost.
	StreamOnly bool
	// Profile, when set, is where a CPU profile of this process (which
	// hosts the in-process pipeline) is written for the run.
	Profile string
}

func (o bfRunOpts) label() string {
	l := fmt.Sprintf("tandem chunk %d workers %d", o.ChunkRows, o.Workers)
	if o.RowsPerSecond > 0 {
		l += fmt.Sprintf(" capped %.0f rows/s", o.RowsPerSecond)
	}
	return l
}

// config is what `tandem run` would load for o, identity mapping.
func (e *bfEnv) config(o bfRunOpts) (*config.Config, error) {
	on := true
	cfg := &config.Config{
		Name:   o.Slot,
		Source: config.SourceConfig{DSN: e.old.DSN(streamDB), Slot: o.Slot, Publication: o.Slot},
		Target: config.TargetConfig{DSN: e.new.DSN(streamDB)},
		Tables: []config.TableConfig{{Source: "public." + o.Table}},
		Backfill: config.BackfillConfig{Enabled: &on, ChunkRows: o.ChunkRows, Workers: o.Workers,
			RowsPerSecond: o.RowsPerSecond},
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tandem config: %w", err)
	}
	return cfg, nil
}

// backfillState reads the migration's progress row on the target: done and
// rows copied. Before tandem has created its schema there is no row.
func (e *bfEnv) backfillState(ctx context.Context, name string) (done bool, copied int64, err error) {
	err = e.newDB.QueryRow(ctx, `SELECT done, rows_copied FROM tandem.backfill WHERE name = $1`, name).Scan(&done, &copied)
	var pgErr *pgconn.PgError
	if errors.Is(err, pgx.ErrNoRows) || (errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000")) {
		return false, 0, nil // table or schema not created yet
	}
	if err != nil {
		return false, 0, fmt.Errorf("poll tandem.backfill: %w", err)
	}
	return done, copied, nil
}

// waitBackfill polls the progress row every 100ms until the table is done.
// alive fails the wait at once if tandem stopped; tick runs on every poll
// (RSS sampling).
func (e *bfEnv) waitBackfill(ctx context.Context, name string, timeout time.Duration, alive func() error, tick func()) error {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if err := alive(); err != nil {
			return err
		}
		if tick != nil {
			tick()
		}
		done, copied, err := e.backfillState(ctx, name)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("backfill %s not done within %s (%d rows copied)", name, timeout, copied)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// teardown drops what a tandem run left behind, as `tandem teardown`
// does: the slot would otherwise pin WAL for the rest of the benchmark.
func (e *bfEnv) teardown(ctx context.Context, cfg *config.Config) error {
	if _, err := decoder.DropSlot(ctx, e.oldDB, cfg.Source.Slot); err != nil {
		return fmt.Errorf("drop slot: %w", err)
	}
	if _, err := decoder.DropPublication(ctx, e.oldDB, cfg.Source.Publication); err != nil {
		return fmt.Errorf("drop publication: %w", err)
	}
	if err := checkpoint.Delete(ctx, e.newDB, cfg.Name); err != nil {
		return fmt.Errorf("delete checkpoint: %w", err)
	}
	return nil
}

// tandemInproc copies the table with the pipeline running in this process,
// timed from pipeline start until tandem.backfill says done.
func (e *bfEnv) tandemInproc(ctx context.Context, o bfRunOpts) (bfResult, error) {
	res := bfResult{Label: o.label()}
	cfg, err := e.config(o)
	if err != nil {
		return res, err
	}
	if err := e.reset(ctx, o.Table); err != nil {
		return res, err
	}
	if o.Profile != "" {
		f, err := os.Create(o.Profile)
		if err != nil {
			return res, fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return res, fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	before := e.sampleCPU()
	start := time.Now()
	t := startInproc(cfg)
	defer func() {
		_ = t.stop()
		if err := e.teardown(context.WithoutCancel(ctx), cfg); err != nil {
			fmt.Fprintf(os.Stderr, "backfill teardown: %v\n", err)
		}
	}()
	if err := e.waitBackfill(ctx, cfg.Name, 10*time.Minute, t.alive, nil); err != nil {
		return res, err
	}
	res.Elapsed = time.Since(start)
	res.CPU = e.sampleCPU().since(before)
	res.Rows = int64(t.metric("tandem_backfill_rows_total"))
	if err := t.stop(); err != nil {
		return res, fmt.Errorf("stop tandem: %w", err)
	}
	if err := e.collectStats(ctx, &res); err != nil {
		return res, err
	}
	return res, e.verify(ctx, o.Table)
}

// tandemProcess copies the table with `tandem run` as a process of its own
// and samples its peak resident set (VmHWM) every 100ms while it copies.
func (e *bfEnv) tandemProcess(ctx context.Context, bin string, o bfRunOpts) (bfResult, error) {
	res := bfResult{Label: o.label() + " (process)"}
	if err := e.reset(ctx, o.Table); err != nil {
		return res, err
	}
	start := time.Now()
	t, cfg, err := e.startProcess(bin, o)
	if err != nil {
		return res, err
	}
	defer func() {
		_ = t.stop()
		if err := e.teardown(context.WithoutCancel(ctx), cfg); err != nil {
			fmt.Fprintf(os.Stderr, "backfill teardown: %v\n", err)
		}
	}()
	before := e.sampleCPU(t.pid())
	// VmHWM is the kernel's own high-water mark, so polling only has to
	// read it before the process exits; reading it on every poll also
	// catches a process that dies of memory exhaustion mid-copy.
	sample := func() {
		if _, peak, err := procMemory(t.pid()); err == nil {
			res.PeakRSS = max(res.PeakRSS, peak)
		}
	}
	if err := e.waitBackfill(ctx, cfg.Name, 15*time.Minute, t.alive, sample); err != nil {
		return res, err
	}
	res.Elapsed = time.Since(start)
	sample()
	res.CPU = e.sampleCPU(t.pid()).since(before)
	if _, res.Rows, err = e.backfillState(ctx, cfg.Name); err != nil {
		return res, err
	}
	if err := t.stop(); err != nil {
		return res, fmt.Errorf("stop tandem: %w\n%s", err, t.logTail())
	}
	if strings.Contains(t.logTail(), "level=ERROR") {
		return res, fmt.Errorf("tandem logged errors:\n%s", t.logTail())
	}
	return res, e.verify(ctx, o.Table)
}

// startProcess writes o's config as YAML and starts `tandem run` on it.
func (e *bfEnv) startProcess(bin string, o bfRunOpts) (*binaryTandem, *config.Config, error) {
	cfg, err := e.config(o)
	if err != nil {
		return nil, nil, err
	}
	// The stream is always on in `tandem run`; the backfill is switched on
	// explicitly so the test does not lean on the default.
	backfill := fmt.Sprintf("{enabled: true, chunk_rows: %d, workers: %d", o.ChunkRows, o.Workers)
	if o.RowsPerSecond > 0 {
		backfill += fmt.Sprintf(", rows_per_second: %.0f", o.RowsPerSecond)
	}
	backfill += "}"
	if o.StreamOnly {
		backfill = "{enabled: false}"
	}
	yaml := fmt.Sprintf(`name: %s
source: {dsn: %q, slot: %s, publication: %s}
target: {dsn: %q}
backfill: %s
metrics: {listen: ""}
control: {socket: %q}
log: {level: info}
tables:
  - source: public.%s
`, cfg.Name, cfg.Source.DSN, cfg.Source.Slot, cfg.Source.Publication, cfg.Target.DSN, backfill, e.controlSocket(o), o.Table)
	cfgPath := filepath.Join(e.dir, o.Slot+".yaml")
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o644); err != nil {
		return nil, nil, fmt.Errorf("write tandem config: %w", err)
	}
	t, err := startBinary(bin, cfgPath, filepath.Join(e.dir, o.Slot+".log"))
	if err != nil {
		return nil, nil, err
	}
	return t, cfg, nil
}

// bfCanPin reports whether processes can be pinned to CPUs 0 and 1.
func bfCanPin() bool {
	_, err := exec.LookPath("taskset")
	return err == nil && runtime.NumCPU() >= 2
}

// bfPin sets the CPU affinity of every process of cluster c to cpus (a
// taskset list such as "0" or "0-1"); backends forked later inherit the
// postmaster's.
func bfPin(c *pgcluster.Cluster, cpus string) error {
	pm := postmasterPID(c)
	if pm == 0 {
		return fmt.Errorf("pin cluster %s: no postmaster", c.Name())
	}
	if out, err := exec.Command("taskset", "-a", "-p", "-c", cpus, strconv.Itoa(pm)).CombinedOutput(); err != nil {
		return fmt.Errorf("pin cluster %s to CPUs %s: %w\n%s", c.Name(), cpus, err, out)
	}
	for pid, p := range readProcs() {
		if p.ppid == pm {
			// A backend may exit between listing and pinning; that is fine.
			_ = exec.Command("taskset", "-a", "-p", "-c", cpus, strconv.Itoa(pid)).Run()
		}
	}
	return nil
}

// bfPinnedCommand writes a script that runs bin pinned to cpus, for code
// that takes a program path (the stream benchmark's pgbench runner,
// startBinary). exec keeps the script's PID, so RSS and CPU are bin's.
func bfPinnedCommand(dir, name, cpus, bin string) (string, error) {
	path := filepath.Join(dir, name+"-cpu"+strings.ReplaceAll(cpus, ",", "_"))
	script := fmt.Sprintf("#!/bin/sh\nexec taskset -c %s %s \"$@\"\n", cpus, bin)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return path, nil
}

// waitStreaming waits until slot is in use on the old side: tandem is
// connected and decoding.
func (e *bfEnv) waitStreaming(ctx context.Context, slot string, alive func() error) error {
	deadline := time.Now().Add(time.Minute)
	for {
		if err := alive(); err != nil {
			return err
		}
		var active bool
		err := e.oldDB.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("look up slot %s: %w", slot, err)
		}
		if active {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("slot %s not streaming within a minute", slot)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// controlSocket is where a process run serves its backfill controls: in
// the run's directory, not in a default place shared with anything else.
func (e *bfEnv) controlSocket(o bfRunOpts) string {
	return filepath.Join(e.dir, o.Slot+".sock")
}

// control sends pause or resume to the `tandem run` of o over its control
// socket, as `tandem backfill pause|resume` does.
func (e *bfEnv) control(ctx context.Context, cfg *config.Config, o bfRunOpts, action string) error {
	c, err := control.NewClient(cfg, control.Target{Socket: e.controlSocket(o)})
	if err != nil {
		return err
	}
	if _, err := c.Change(ctx, url.Values{action: {""}}); err != nil {
		return fmt.Errorf("backfill %s: %w", action, err)
	}
	return nil
}
