package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
	"github.com/tandem-migrate/tandem/pkg/checkpoint"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/decoder"
	"github.com/tandem-migrate/tandem/pkg/pipeline"
)

// streamDB is the database both clusters use; pgbench and tandem share it.
const streamDB = "postgres"

// pgbenchTables are the TPC-B tables, in the order pgbench's transaction
// touches them last (history is the one row every transaction inserts).
var pgbenchTables = []string{"pgbench_branches", "pgbench_tellers", "pgbench_accounts", "pgbench_history"}

// streamSourceDDL runs on the old database after `pgbench -i`. pgbench's
// history table has no key, so neither tandem nor native replication could
// apply its updates or deletes; giving it a surrogate key is what an
// operator would do before a migration too. lagprobe carries the lag
// samples and fat the single huge transactions of the memory phase.
const streamSourceDDL = `
ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY;
CREATE TABLE lagprobe (id bigint PRIMARY KEY, ts timestamptz NOT NULL);
CREATE TABLE fat (id bigint PRIMARY KEY, payload text NOT NULL);
`

// streamTargetDDL is the new database: pgbench 15's own DDL for the four
// tables (column order matters, the contents check compares row text), and
// the same hid key, without its sequence since the values always come from
// the old side. The lagprobe trigger reports each applied probe row with
// NOTIFY, which is delivered when the applying transaction commits: that is
// the moment the row becomes visible, so no polling interval blurs the lag.
// ENABLE ALWAYS makes it fire in native replication's apply worker too,
// which runs with session_replication_role = replica.
const streamTargetDDL = `
CREATE TABLE pgbench_branches (bid int NOT NULL PRIMARY KEY, bbalance int, filler char(88)) WITH (fillfactor = 100);
CREATE TABLE pgbench_tellers (tid int NOT NULL PRIMARY KEY, bid int, tbalance int, filler char(84)) WITH (fillfactor = 100);
CREATE TABLE pgbench_accounts (aid int NOT NULL PRIMARY KEY, bid int, abalance int, filler char(84)) WITH (fillfactor = 100);
CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22), hid bigint PRIMARY KEY);
CREATE TABLE lagprobe (id bigint PRIMARY KEY, ts timestamptz NOT NULL);
CREATE TABLE fat (id bigint PRIMARY KEY, payload text NOT NULL);
CREATE FUNCTION lagprobe_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_notify('lagprobe', NEW.id::text);
	RETURN NULL;
END $$;
CREATE TRIGGER lagprobe_notify AFTER INSERT ON lagprobe FOR EACH ROW EXECUTE FUNCTION lagprobe_notify();
ALTER TABLE lagprobe ENABLE ALWAYS TRIGGER lagprobe_notify;
`

// streamEnv is an old/new cluster pair holding the same TPC-B data. Every
// phase leaves it with both sides equal and no slot, publication or
// subscription behind, so phases can run alone (-bench Stream/lag) or in
// any order.
type streamEnv struct {
	old, new     *pgcluster.Cluster
	oldDB, newDB *pgx.Conn // the benchmark's own sessions, one per side
	pgbench      string
	sizes        streamSizes
	// natsURL, when set, makes tandem publish to NATS JetStream too
	// (BenchmarkNATS).
	natsURL string
	// probeOffset numbers a tandem lag run's probes after an earlier
	// run's in the same table.
	probeOffset int64

	buildOnce sync.Once
	binary    string // tandem built for the memory phase
	buildErr  error
}

// setupStreamEnv starts both clusters, initialises TPC-B on the old one and
// copies it to the new one.
func setupStreamEnv(b *testing.B, pgbenchPath string, sz streamSizes) *streamEnv {
	b.Helper()
	ctx := b.Context()
	// A checkpoint forced by max_wal_size in the middle of one timed window
	// but not another would dominate the comparison; the phases issue
	// CHECKPOINT themselves before timing instead.
	opts := func(name string) pgcluster.Options {
		return pgcluster.Options{Name: name, Settings: map[string]string{"max_wal_size": "8GB"}}
	}
	e := &streamEnv{
		old:     pgcluster.ForTest(b, opts("old")),
		new:     pgcluster.ForTest(b, opts("new")),
		pgbench: pgbenchPath,
		sizes:   sz,
	}
	start := time.Now()
	if _, err := e.runPgbench(ctx, nil, "-i", "-q", "-s", strconv.Itoa(sz.scale)); err != nil {
		b.Fatalf("pgbench -i: %v", err)
	}
	e.oldDB, e.newDB = benchConn(b, e.old), benchConn(b, e.new)
	if _, err := e.oldDB.Exec(ctx, streamSourceDDL); err != nil {
		b.Fatalf("old schema: %v", err)
	}
	if _, err := e.newDB.Exec(ctx, streamTargetDDL); err != nil {
		b.Fatalf("new schema: %v", err)
	}
	var rows int64
	for _, t := range pgbenchTables {
		n, err := copyTable(ctx, e.oldDB, e.newDB, t)
		if err != nil {
			b.Fatalf("copy %s to the new database: %v", t, err)
		}
		rows += n
	}
	if err := e.compare(ctx, pgbenchTables...); err != nil {
		b.Fatalf("after the initial copy: %v", err)
	}
	b.Logf("setup: pgbench scale %d initialised and %d rows copied to the new database in %s", sz.scale, rows, time.Since(start).Round(100*time.Millisecond))
	return e
}

// copyTable streams one table from one session to the other with COPY in
// binary form (both sides run the same server version, and the initial
// copy is not what is being measured).
func copyTable(ctx context.Context, from, to *pgx.Conn, table string) (int64, error) {
	ident := pgx.Identifier{table}.Sanitize()
	pr, pw := io.Pipe()
	sent := make(chan error, 1)
	go func() {
		_, err := from.PgConn().CopyTo(ctx, pw, "COPY "+ident+" TO STDOUT (FORMAT binary)")
		pw.CloseWithError(err)
		sent <- err
	}()
	tag, err := to.PgConn().CopyFrom(ctx, pr, "COPY "+ident+" FROM STDIN (FORMAT binary)")
	// Unblocks the sender if the receiving side gave up early.
	pr.CloseWithError(errors.New("receiver stopped"))
	if serr := <-sent; serr != nil && err == nil {
		err = fmt.Errorf("read from the old database: %w", serr)
	}
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// tableDigest is an order-independent fingerprint of a table: row count
// and the sum of the hashes of each row's text form.
type tableDigest struct{ rows, hash int64 }

func digest(ctx context.Context, conn *pgx.Conn, tables []string) (map[string]tableDigest, error) {
	out := map[string]tableDigest{}
	for _, t := range tables {
		var d tableDigest
		q := fmt.Sprintf(`SELECT count(*), COALESCE(sum(hashtext(t::text)::int8), 0)::int8 FROM %s t`, pgx.Identifier{t}.Sanitize())
		if err := conn.QueryRow(ctx, q).Scan(&d.rows, &d.hash); err != nil {
			return nil, fmt.Errorf("digest %s: %w", t, err)
		}
		out[t] = d
	}
	return out, nil
}

// compare checks that tables hold the same rows on both sides. The figures
// mean nothing if the stream that produced them lost or bent a row.
func (e *streamEnv) compare(ctx context.Context, tables ...string) error {
	var oldD, newD map[string]tableDigest
	var oldErr, newErr error
	var wg sync.WaitGroup
	wg.Go(func() { oldD, oldErr = digest(ctx, e.oldDB, tables) })
	wg.Go(func() { newD, newErr = digest(ctx, e.newDB, tables) })
	wg.Wait()
	if err := errors.Join(oldErr, newErr); err != nil {
		return err
	}
	var errs []error
	for _, t := range tables {
		if oldD[t] != newD[t] {
			errs = append(errs, fmt.Errorf("%s differs: old has %d rows (hash %d), new has %d rows (hash %d)", t, oldD[t].rows, oldD[t].hash, newD[t].rows, newD[t].hash))
		}
	}
	return errors.Join(errs...)
}

// settle gives every timed phase the same starting point on both sides:
// dead tuples of the previous phase vacuumed, statistics fresh and dirty
// buffers written, so neither a checkpoint nor autovacuum's backlog falls
// into one system's window and not the other's.
func (e *streamEnv) settle(ctx context.Context) error {
	list := strings.Join(pgbenchTables, ", ")
	for _, c := range []*pgx.Conn{e.oldDB, e.newDB} {
		if _, err := c.Exec(ctx, "VACUUM ANALYZE "+list); err != nil {
			return fmt.Errorf("vacuum: %w", err)
		}
		if _, err := c.Exec(ctx, "CHECKPOINT"); err != nil {
			return fmt.Errorf("checkpoint: %w", err)
		}
	}
	return nil
}

// checkpointBoth writes out what a load left dirty before a drain is timed.
func (e *streamEnv) checkpointBoth(ctx context.Context) error {
	for _, c := range []*pgx.Conn{e.oldDB, e.newDB} {
		if _, err := c.Exec(ctx, "CHECKPOINT"); err != nil {
			return fmt.Errorf("checkpoint: %w", err)
		}
	}
	return nil
}

// pgbenchRun is what one pgbench invocation reported.
type pgbenchRun struct {
	tx  int64   // transactions processed
	tps float64 // excluding connection time
	out string
}

var (
	pgbenchTxRe  = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	pgbenchTPSRe = regexp.MustCompile(`tps = ([0-9.]+)`)
	pgbenchFail  = regexp.MustCompile(`number of failed transactions: (\d+)`)
)

// runPgbench runs pgbench against the old database. env adds variables,
// e.g. PGOPTIONS for the load session only.
func (e *streamEnv) runPgbench(ctx context.Context, env []string, args ...string) (pgbenchRun, error) {
	args = append(args, "-h", "127.0.0.1", "-p", strconv.Itoa(e.old.Port()), "-U", "postgres", streamDB)
	cmd := exec.CommandContext(ctx, e.pgbench, args...)
	cmd.Env = append(cleanEnv("PG"), env...)
	out, err := cmd.CombinedOutput()
	run := pgbenchRun{out: string(out)}
	if err != nil {
		return run, fmt.Errorf("%s %s: %w\n%s", e.pgbench, strings.Join(args, " "), err, out)
	}
	if m := pgbenchTxRe.FindSubmatch(out); m != nil {
		run.tx, _ = strconv.ParseInt(string(m[1]), 10, 64)
	}
	if m := pgbenchTPSRe.FindSubmatch(out); m != nil {
		run.tps, _ = strconv.ParseFloat(string(m[1]), 64)
	}
	if m := pgbenchFail.FindSubmatch(out); m != nil && string(m[1]) != "0" {
		return run, fmt.Errorf("pgbench reported %s failed transactions; the change count would be wrong:\n%s", m[1], out)
	}
	return run, nil
}

// cleanEnv is the environment without variables starting with prefix:
// PG* pointed at a developer's own server, TANDEM_* overriding the config
// file of the tandem binary.
func cleanEnv(prefix string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, prefix) {
			env = append(env, kv)
		}
	}
	return env
}

// loadBacklog runs the fixed TPC-B load that both systems drain. A fixed
// transaction count (not a duration) makes the two backlogs identical in
// size. The load session commits asynchronously: the source's fsyncs are
// not what is measured, and it halves the time to build the backlog.
func (e *streamEnv) loadBacklog(ctx context.Context) (pgbenchRun, error) {
	sz := e.sizes
	run, err := e.runPgbench(ctx, []string{"PGOPTIONS=-c synchronous_commit=off"},
		"-n", "-c", strconv.Itoa(sz.clients), "-j", "2", "-t", strconv.Itoa(sz.txPerClient))
	if err != nil {
		return run, err
	}
	if want := int64(sz.clients * sz.txPerClient); run.tx != want {
		return run, fmt.Errorf("pgbench processed %d transactions, want %d:\n%s", run.tx, want, run.out)
	}
	return run, nil
}

// historyMark is the old side's pgbench_history after a load. Every TPC-B
// transaction inserts exactly one history row, both systems apply each
// source transaction atomically and in commit order, so the new side having
// as many history rows as the old one means every transaction (and its
// three updates) is applied: an exact end point, unlike LSN positions that
// move on idle keepalives and checkpoints every few seconds.
type historyMark struct{ maxHid, rows int64 }

func (e *streamEnv) historyMark(ctx context.Context) (historyMark, error) {
	var m historyMark
	err := e.oldDB.QueryRow(ctx, `SELECT COALESCE(max(hid), 0), count(*) FROM pgbench_history`).Scan(&m.maxHid, &m.rows)
	if err != nil {
		return m, fmt.Errorf("read history mark: %w", err)
	}
	return m, nil
}

// waitHistory waits until the new side has caught up with mark. It polls
// max(hid) first, an index probe too cheap to slow the apply it watches,
// then the exact count, which only a few commits separate from it.
func (e *streamEnv) waitHistory(ctx context.Context, mark historyMark, alive func() error, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var maxHid, rows int64
	for {
		if err := alive(); err != nil {
			return err
		}
		err := e.newDB.QueryRow(ctx, `SELECT COALESCE(max(hid), 0) FROM pgbench_history`).Scan(&maxHid)
		if err == nil && maxHid >= mark.maxHid {
			err = e.newDB.QueryRow(ctx, `SELECT count(*) FROM pgbench_history`).Scan(&rows)
			if err == nil && rows == mark.rows {
				return nil
			}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("new side did not catch up within %s: history max(hid) %d of %d, rows %d of %d", timeout, maxHid, mark.maxHid, rows, mark.rows)
		}
		if err != nil {
			return fmt.Errorf("poll new side: %w", err)
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// waitSlot waits until a replication slot on the old side is in use, i.e.
// its consumer is connected and streaming.
func (e *streamEnv) waitSlot(ctx context.Context, slot string, alive func() error, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if err := alive(); err != nil {
			return err
		}
		var active bool
		err := e.oldDB.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active)
		if err == nil && active {
			return nil
		}
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("look up slot %s: %w", slot, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("slot %s not streaming within %s", slot, timeout)
}

func alwaysAlive() error { return nil }

// tandemConfig maps the named tables one to one, without backfill: the
// new side already holds the data, only the stream is measured.
func (e *streamEnv) tandemConfig(slot string, tables ...string) (*config.Config, error) {
	cfg := &config.Config{
		Source: config.SourceConfig{DSN: e.old.DSN(streamDB), Slot: slot, Publication: slot},
		Target: config.TargetConfig{DSN: e.new.DSN(streamDB)},
	}
	for _, t := range tables {
		cfg.Tables = append(cfg.Tables, config.TableConfig{Source: "public." + t})
	}
	off := false
	cfg.Backfill.Enabled = &off
	if e.natsURL != "" {
		cfg.NATS = config.NATSConfig{URL: e.natsURL, CreateStream: true}
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tandem config: %w", err)
	}
	return cfg, nil
}

// teardownTandem removes what a tandem run left on both sides, as
// `tandem teardown` does, so the next phase starts clean.
func (e *streamEnv) teardownTandem(ctx context.Context, cfg *config.Config) error {
	if _, err := decoder.DropSlot(ctx, e.oldDB, cfg.Source.Slot); err != nil {
		return err
	}
	if _, err := decoder.DropPublication(ctx, e.oldDB, cfg.Source.Publication); err != nil {
		return err
	}
	if err := checkpoint.Delete(ctx, e.newDB, cfg.Name); err != nil {
		return fmt.Errorf("delete checkpoint: %w", err)
	}
	return nil
}

// inprocTandem is a pipeline running in the benchmark process, the way
// `tandem run` runs it, with a registry of its own to read counters from.
type inprocTandem struct {
	p      *pipeline.Pipeline
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
	exited bool
	err    error
}

func streamLogger() *slog.Logger {
	if os.Getenv("TANDEM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func startInproc(cfg *config.Config) *inprocTandem {
	ctx, cancel := context.WithCancel(context.Background())
	t := &inprocTandem{reg: prometheus.NewRegistry(), cancel: cancel, done: make(chan error, 1)}
	t.p = pipeline.New(cfg, streamLogger(), t.reg)
	go func() { t.done <- t.p.Run(ctx) }()
	return t
}

// alive reports an error once the pipeline has stopped on its own, so
// waits fail at once instead of timing out.
func (t *inprocTandem) alive() error {
	if t.exited {
		return fmt.Errorf("tandem stopped: %v", t.err)
	}
	select {
	case t.err = <-t.done:
		t.exited = true
		return fmt.Errorf("tandem stopped: %v", t.err)
	default:
		return nil
	}
}

// stop cancels the pipeline (a clean stop commits what is complete) and
// waits for it.
func (t *inprocTandem) stop() error {
	t.cancel()
	if t.exited {
		return t.err
	}
	select {
	case t.err = <-t.done:
		t.exited = true
		return t.err
	case <-time.After(30 * time.Second):
		return errors.New("tandem did not stop within 30s")
	}
}

// metric sums every series of a counter or histogram (its sample sum).
func (t *inprocTandem) metric(name string) float64 {
	mfs, err := t.reg.Gather()
	if err != nil {
		return -1
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				sum += m.GetHistogram().GetSampleSum()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// createSubscription sets up PostgreSQL's own logical replication of
// tables from old to new, without copying data (the sides are already
// equal). The subscription's slot is created now, so everything written
// from here on is what it will apply.
func (e *streamEnv) createSubscription(ctx context.Context, name string, tables []string, enabled bool) error {
	idents := make([]string, len(tables))
	for i, t := range tables {
		idents[i] = pgx.Identifier{t}.Sanitize()
	}
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := e.oldDB.Exec(ctx, "CREATE PUBLICATION "+ident+" FOR TABLE "+strings.Join(idents, ", ")); err != nil {
		return fmt.Errorf("create publication: %w", err)
	}
	conninfo := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s", e.old.Port(), streamDB)
	q := fmt.Sprintf("CREATE SUBSCRIPTION %s CONNECTION '%s' PUBLICATION %s WITH (copy_data = false, enabled = %t)", ident, conninfo, ident, enabled)
	if _, err := e.newDB.Exec(ctx, q); err != nil {
		return fmt.Errorf("create subscription: %w", err)
	}
	return nil
}

// dropSubscription removes the subscription (and with it its slot on the
// old side) and the publication.
func (e *streamEnv) dropSubscription(ctx context.Context, name string) error {
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := e.newDB.Exec(ctx, "DROP SUBSCRIPTION IF EXISTS "+ident); err != nil {
		return fmt.Errorf("drop subscription: %w", err)
	}
	if _, err := e.oldDB.Exec(ctx, "DROP PUBLICATION IF EXISTS "+ident); err != nil {
		return fmt.Errorf("drop publication: %w", err)
	}
	return nil
}

// serverLogs is attached to failures of native replication, whose errors
// only the new side's server log shows.
func (e *streamEnv) serverLogs() string {
	return fmt.Sprintf("--- new server log ---\n%s\n--- old server log ---\n%s", e.new.LogTail(4<<10), e.old.LogTail(4<<10))
}

// tandemBinary builds cmd/tandem once, so its memory can be measured as a
// process of its own.
func (e *streamEnv) tandemBinary(dir string) (string, error) {
	e.buildOnce.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			e.buildErr = fmt.Errorf("building tandem needs the go tool on PATH: %w", err)
			return
		}
		e.binary = filepath.Join(dir, "tandem")
		out, err := exec.Command(goTool, "build", "-o", e.binary, "github.com/tandem-migrate/tandem/cmd/tandem").CombinedOutput()
		if err != nil {
			e.buildErr = fmt.Errorf("go build ./cmd/tandem: %w\n%s", err, out)
		}
	})
	return e.binary, e.buildErr
}

// watchWaits samples the replicating processes of both sides (see
// sampleWaits) until the returned func is called.
func (e *streamEnv) watchWaits(ctx context.Context) (func() map[string]waitProfile, error) {
	own := []uint32{e.oldDB.PgConn().PID(), e.newDB.PgConn().PID()}
	stopOld, err := sampleWaits(ctx, e.old, false, own)
	if err != nil {
		return nil, err
	}
	stopNew, err := sampleWaits(ctx, e.new, true, own)
	if err != nil {
		stopOld()
		return nil, err
	}
	return func() map[string]waitProfile {
		return map[string]waitProfile{e.old.Name(): stopOld(), e.new.Name(): stopNew()}
	}, nil
}

// newWAL is the new side's current WAL position in bytes, to measure how
// much WAL applying a backlog writes.
func (e *streamEnv) newWAL(ctx context.Context) (int64, error) {
	var pos int64
	if err := e.newDB.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8`).Scan(&pos); err != nil {
		return 0, fmt.Errorf("read WAL position of the new side: %w", err)
	}
	return pos, nil
}

// benchConn opens a session on the benchmark database, closed when b ends.
func benchConn(b *testing.B, c *pgcluster.Cluster) *pgx.Conn {
	b.Helper()
	conn, err := c.Connect(context.Background(), streamDB)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
