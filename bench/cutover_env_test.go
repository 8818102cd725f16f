package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
	"github.com/tandem-migrate/tandem/internal/testkit"
)

// The cutover benchmark's world: an application database "app" on each
// cluster (the fences make it read-only, so the clusters' maintenance
// database stays usable for the benchmark's own settings), TPC-B on the
// old one, the same tables with one column renamed on the new one, and
// the real `tandem run` between them.

// cutDB is the application database on both clusters.
const cutDB = "app"

// cutName is the migration's name, slot and publication.
const cutName = "cut"

// cutTables is how many mappings the backfill must finish.
const cutTables = 4

// cutOldDDL runs after `pgbench -i`. pgbench_history has no key, and
// tandem replicates only tables with one; an operator gives it a
// surrogate key before the migration, as here.
const cutOldDDL = `ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY`

// cutNewDDL is the new schema: pgbench's tables with abalance renamed to
// balance, so the forward mapping is not identity and the reverse one is
// derived from it. hid is a bigserial here too: after cutover the
// applications insert history rows on this side, drawing keys from the
// sequence the ceremony moves past the old one.
const cutNewDDL = `
CREATE TABLE pgbench_branches (bid int NOT NULL PRIMARY KEY, bbalance int, filler char(88)) WITH (fillfactor = 100);
CREATE TABLE pgbench_tellers (tid int NOT NULL PRIMARY KEY, bid int, tbalance int, filler char(84)) WITH (fillfactor = 100);
CREATE TABLE pgbench_accounts (aid int NOT NULL PRIMARY KEY, bid int, balance int, filler char(84)) WITH (fillfactor = 100);
CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22), hid bigserial PRIMARY KEY);
`

// cutNewScript is pgbench's built-in tpcb-like script in the new schema:
// the applications' load once they write to the new database.
const cutNewScript = `\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET balance = balance + :delta WHERE aid = :aid;
SELECT balance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
`

// cutClientSQL is the client's one-statement transaction on each side: a
// balance change and its history row, tagged so the end check can count
// the client's rows on both databases.
var cutClientSQL = [2]string{
	testkit.OldSide: `WITH u AS (UPDATE pgbench_accounts SET abalance = abalance + $2 WHERE aid = $1 RETURNING aid, bid)
		INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, filler) SELECT 1, bid, aid, $2, now(), 'bench-client' FROM u`,
	testkit.NewSide: `WITH u AS (UPDATE pgbench_accounts SET balance = balance + $2 WHERE aid = $1 RETURNING aid, bid)
		INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, filler) SELECT 1, bid, aid, $2, now(), 'bench-client' FROM u`,
}

// cutEnv is the cluster pair, the tandem binary and its daemon.
type cutEnv struct {
	clusters [2]*pgcluster.Cluster // by testkit.Side
	dir      string
	bin      string
	pgbench  string
	scale    int
	daemon   *binaryTandem
	// cfgPath is the migration's config for each cutover.verify mode;
	// they differ in nothing else, so one daemon serves all of them.
	cfgPath map[string]string
	// setup is how long each part of the setup took, in order.
	setup []cutStep
}

func (e *cutEnv) dsn(s testkit.Side) string { return e.clusters[s].DSN(cutDB) }

// setupCutEnv starts both clusters, loads TPC-B on the old one, creates
// the new schema, starts `tandem run` and waits until the backfill is done
// and `tandem verify` has recorded a clean pass (the cutover gates need
// one).
func setupCutEnv(b *testing.B, pgbench string, scale int, verifyModes []string) *cutEnv {
	b.Helper()
	ctx := b.Context()
	e := &cutEnv{dir: b.TempDir(), pgbench: pgbench, scale: scale, cfgPath: map[string]string{}}
	start := time.Now()
	phase := func(name string) {
		e.setup = append(e.setup, cutStep{name: name, took: time.Since(start)})
		start = time.Now()
	}
	e.clusters[testkit.OldSide] = pgcluster.ForTest(b, pgcluster.Options{Name: "cutold"})
	e.clusters[testkit.NewSide] = pgcluster.ForTest(b, pgcluster.Options{Name: "cutnew"})
	for _, c := range e.clusters {
		if err := c.CreateDB(ctx, cutDB); err != nil {
			b.Fatal(err)
		}
	}
	phase("clusters")
	if out, err := e.pgbenchCmd(testkit.OldSide, "-i", "-q", "-s", strconv.Itoa(scale)).CombinedOutput(); err != nil {
		b.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	phase("pgbench -i")
	if err := e.clusters[testkit.OldSide].Exec(ctx, cutDB, cutOldDDL); err != nil {
		b.Fatalf("old schema: %v", err)
	}
	if err := e.clusters[testkit.NewSide].Exec(ctx, cutDB, cutNewDDL); err != nil {
		b.Fatalf("new schema: %v", err)
	}
	if err := os.WriteFile(e.scriptPath(), []byte(cutNewScript), 0o644); err != nil {
		b.Fatal(err)
	}
	var err error
	if e.bin, err = (&streamEnv{}).tandemBinary(e.dir); err != nil {
		b.Fatal(err)
	}
	phase("build tandem")
	for _, mode := range verifyModes {
		e.cfgPath[mode] = filepath.Join(e.dir, "cut-verify-"+mode+".yaml")
		if err := os.WriteFile(e.cfgPath[mode], []byte(e.yaml(mode)), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	if e.daemon, err = startBinary(e.bin, e.cfgPath[verifyModes[0]], filepath.Join(e.dir, "tandem-run.log")); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := e.daemon.stop(); err != nil {
			b.Logf("stop tandem run: %v\n%s", err, e.daemon.logTail())
		}
	})
	newDB, err := e.clusters[testkit.NewSide].Connect(ctx, cutDB)
	if err != nil {
		b.Fatal(err)
	}
	testkit.WaitBackfill(b, newDB, cutName, cutTables, 5*time.Minute, e.daemon.alive)
	newDB.Close(ctx)
	phase("backfill")
	if out, err := e.tandem(ctx, "verify", "--config", e.cfgPath[verifyModes[0]]); err != nil {
		b.Fatalf("tandem verify after the backfill: %v\n%s", err, out)
	}
	phase("verify")
	return e
}

// yaml is the migration's config with cutover.verify set to mode. The
// control socket lives in the run's directory, not in a default place
// shared with anything else; no metrics listener, so no port is taken.
func (e *cutEnv) yaml(mode string) string {
	return fmt.Sprintf(`name: %s
source: {dsn: %q, slot: %s, publication: %s}
target: {dsn: %q}
backfill: {enabled: true}
apply: {retry_min: 100ms, retry_max: 1s}
cutover: {max_lag: 10s, verify: %s, timeout: 1m}
metrics: {listen: ""}
control: {socket: %q}
log: {level: info}
tables:
  - source: public.pgbench_branches
  - source: public.pgbench_tellers
  - source: public.pgbench_accounts
    columns: {balance: abalance}
  - source: public.pgbench_history
`, cutName, e.dsn(testkit.OldSide), cutName, cutName, e.dsn(testkit.NewSide), mode, filepath.Join(e.dir, "tandem.sock"))
}

func (e *cutEnv) scriptPath() string { return filepath.Join(e.dir, "tpcb-new-schema.sql") }

// pgbenchCmd is pgbench against one side's application database, without
// the caller's PG* variables.
func (e *cutEnv) pgbenchCmd(s testkit.Side, args ...string) *exec.Cmd {
	args = append(args, "-h", "127.0.0.1", "-p", strconv.Itoa(e.clusters[s].Port()), "-U", "postgres", cutDB)
	cmd := exec.Command(e.pgbench, args...)
	cmd.Env = cleanEnv("PG")
	return cmd
}

// tandem runs a short tandem command and returns its output.
func (e *cutEnv) tandem(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, args...)
	cmd.Env = cleanEnv("TANDEM_")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// setSync sets synchronous_commit for every new session of the
// application database on both clusters: the old one is the source of
// the forward stream, the new one that of the reverse stream. It runs in
// the maintenance database, which no fence makes read-only.
func (e *cutEnv) setSync(ctx context.Context, setting string) error {
	for _, c := range e.clusters {
		if err := c.Exec(ctx, "postgres", "ALTER DATABASE "+cutDB+" SET synchronous_commit = '"+setting+"'"); err != nil {
			return fmt.Errorf("synchronous_commit %s: %w", setting, err)
		}
	}
	return nil
}

// waitReverse waits until the daemon streams new -> old. The slot lives
// in the new cluster, read from its maintenance database, which no fence
// makes read-only; the stream benchmark's slot wait does the polling.
func (e *cutEnv) waitReverse(ctx context.Context) error {
	conn, err := e.clusters[testkit.NewSide].Connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return (&streamEnv{oldDB: conn}).waitSlot(ctx, cutName+"_rev", e.daemon.alive, 30*time.Second)
}

// clientRows counts the client's history rows on one side.
func (e *cutEnv) clientRows(ctx context.Context, s testkit.Side) (int64, error) {
	conn, err := e.clusters[s].Connect(ctx, cutDB)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var n int64
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pgbench_history WHERE filler = 'bench-client'`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count the client's rows on the %s database: %w", s, err)
	}
	return n, nil
}

// cutLoad is one pgbench run on the authoritative database. It runs until
// the fence ends its sessions (pgbench does not reconnect, so every client
// aborts and pgbench exits).
type cutLoad struct {
	side testkit.Side
	cmd  *exec.Cmd
	out  bytes.Buffer // read only after done
	done chan struct{}
	err  error
}

// cutClients is the load's pgbench -c; -j 2 runs them on two threads.
const cutClients = 8

func (e *cutEnv) startLoad(s testkit.Side) (*cutLoad, error) {
	args := []string{"-n", "-c", strconv.Itoa(cutClients), "-j", "2", "-T", "600", "-P", "1"}
	if s == testkit.NewSide {
		// A custom script takes :scale from -s.
		args = append(args, "-f", e.scriptPath(), "-s", strconv.Itoa(e.scale))
	}
	l := &cutLoad{side: s, cmd: e.pgbenchCmd(s, args...), done: make(chan struct{})}
	l.cmd.Stdout, l.cmd.Stderr = &l.out, &l.out
	if err := l.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start pgbench on the %s database: %w", s, err)
	}
	go func() {
		l.err = l.cmd.Wait()
		close(l.done)
	}()
	return l, nil
}

// running fails when pgbench stopped before a fence could have ended it.
func (l *cutLoad) running() error {
	select {
	case <-l.done:
		return fmt.Errorf("pgbench on the %s database stopped before the fence (%v):\n%s", l.side, l.err, bfTail(l.out.String(), 2000))
	default:
		return nil
	}
}

var cutProgressRe = regexp.MustCompile(`progress: [0-9.]+ s, ([0-9.]+) tps`)

// finish waits for pgbench to end after the fence (SIGKILL after 15s:
// a pgbench the fence missed would otherwise write on for ten minutes)
// and returns the median of its one-second tps figures.
func (l *cutLoad) finish() (float64, error) {
	select {
	case <-l.done:
	case <-time.After(15 * time.Second):
		_ = l.cmd.Process.Signal(syscall.SIGKILL)
		<-l.done
		return 0, fmt.Errorf("pgbench on the %s database was still running 15s after the fence:\n%s", l.side, bfTail(l.out.String(), 2000))
	}
	var tps []float64
	for _, m := range cutProgressRe.FindAllStringSubmatch(l.out.String(), -1) {
		if v, err := strconv.ParseFloat(m[1], 64); err == nil && v > 0 {
			tps = append(tps, v)
		}
	}
	// The fence's way of ending it: every session terminated.
	if !strings.Contains(l.out.String(), "terminating connection due to administrator command") && l.err != nil {
		return median(tps), fmt.Errorf("pgbench on the %s database: %v\n%s", l.side, l.err, bfTail(l.out.String(), 2000))
	}
	return median(tps), nil
}

// stop ends a load that no fence will end (a failed run).
func (l *cutLoad) stop() {
	select {
	case <-l.done:
	default:
		_ = l.cmd.Process.Signal(syscall.SIGKILL)
		<-l.done
	}
}

// cutWriter is the application the benchmark watches: one short write
// transaction about every millisecond on the database it is pointed at.
// Writes refused by a fence or cut by an ended session are counted and
// retried; it moves to the other database only when told to (the
// ceremony printed that the other side is ready), because writing the new
// database before that would break the migration's one rule (and, on the
// first cutover, the new database is not fenced, so nothing would stop
// it). Each move yields a gap: the last commit acknowledged on the side it
// left to the first one acknowledged on the side it moved to.
type cutWriter struct {
	dsn      [2]string
	accounts int
	want     atomic.Int32 // the side it is pointed at
	// fresh asks for new sessions before the next write, so a changed
	// database setting applies to the client too.
	fresh   atomic.Bool
	commits [2]atomic.Int64
	refused [2]atomic.Int64
	gaps    chan cutGap
	// done closes when start returns; err is then why.
	done chan struct{}
	err  error
}

// cutGap is one move of the client between databases.
type cutGap struct {
	from, to        testkit.Side
	lastOK, firstOK time.Time
}

func (g cutGap) gap() time.Duration { return g.firstOK.Sub(g.lastOK) }

// cutWriteEvery is the client's cadence.
const cutWriteEvery = time.Millisecond

func newCutWriter(e *cutEnv) *cutWriter {
	return &cutWriter{
		dsn:      [2]string{e.dsn(testkit.OldSide), e.dsn(testkit.NewSide)},
		accounts: 100_000 * e.scale,
		// More than any run's ceremonies, so a send never blocks.
		gaps: make(chan cutGap, 1024),
		done: make(chan struct{}),
	}
}

// start runs the client until ctx ends or a write fails.
func (w *cutWriter) start(ctx context.Context) {
	defer close(w.done)
	w.err = w.run(ctx)
}

func (w *cutWriter) point(s testkit.Side) { w.want.Store(int32(s)) }

// run writes until ctx ends; it returns an error for any failure other
// than a fence's refusal, a key collision above all.
func (w *cutWriter) run(ctx context.Context) error {
	var conns [2]*pgx.Conn
	closeAll := func() {
		for i, c := range conns {
			if c != nil {
				c.Close(context.Background())
				conns[i] = nil
			}
		}
	}
	defer closeAll()
	side := testkit.Side(w.want.Load())
	lastSide := side
	var lastOK time.Time
	for ctx.Err() == nil {
		start := time.Now()
		if s := testkit.Side(w.want.Load()); s != side || w.fresh.Swap(false) {
			// Repointed: fresh sessions, as an application that changes
			// its connection string gets; a session that started while a
			// database was fenced keeps its read-only default after the
			// fence is lifted.
			closeAll()
			side = s
		}
		err := w.write(ctx, &conns[side], side)
		switch {
		case err == nil:
			now := time.Now()
			w.commits[side].Add(1)
			if side != lastSide && !lastOK.IsZero() {
				select {
				case w.gaps <- cutGap{from: lastSide, to: side, lastOK: lastOK, firstOK: now}:
				default:
				}
			}
			lastOK, lastSide = now, side
		case ctx.Err() != nil:
			return nil
		case refusedByFence(err):
			w.refused[side].Add(1)
			if conns[side] != nil && conns[side].IsClosed() {
				conns[side] = nil
			}
		default:
			return fmt.Errorf("client write on the %s database: %w", side, err)
		}
		time.Sleep(time.Until(start.Add(cutWriteEvery)))
	}
	return nil
}

func (w *cutWriter) write(ctx context.Context, conn **pgx.Conn, s testkit.Side) error {
	if *conn == nil {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := pgx.Connect(cctx, w.dsn[s])
		cancel()
		if err != nil {
			return err
		}
		*conn = c
	}
	_, err := (*conn).Exec(ctx, cutClientSQL[s], 1+rand.IntN(w.accounts), rand.IntN(10001)-5000)
	return err
}

// refusedByFence is what an application sees while a database is fenced:
// read-only (25006), its session ended (57P01), or the connection broken.
func refusedByFence(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "25006" || strings.HasPrefix(pgErr.Code, "57P")
	}
	return true
}

// awaitGap waits for the client's move after a ceremony said ready.
func (w *cutWriter) awaitGap(to testkit.Side, timeout time.Duration) (cutGap, error) {
	select {
	case g := <-w.gaps:
		if g.to != to {
			return g, fmt.Errorf("the client moved to the %s database, expected the %s", g.to, to)
		}
		return g, nil
	case <-w.done:
		return cutGap{}, fmt.Errorf("the client stopped: %v", w.err)
	case <-time.After(timeout):
		return cutGap{}, fmt.Errorf("the client committed nothing on the %s database within %s of the ready line (refused there: %d)", to, timeout, w.refused[to].Load())
	}
}

// cutCeremony is one `tandem cutover` or `tandem rollback` as it printed
// itself.
type cutCeremony struct {
	verb   string
	window time.Duration // "Writes were unavailable for X (fence to ready)"
	steps  []cutStep     // the steps inside the window, in order
	gates  []cutStep     // before the fence
	wall   time.Duration // the whole command
	out    string
}

type cutStep struct {
	name, detail string
	took         time.Duration
}

var (
	cutReadyRe = regexp.MustCompile(`Writes were unavailable for (\S+) \(fence to ready\)`)
	// "  done fence the old database              12.3ms  read-only ...":
	// the name is padded, then the duration, then two spaces. The
	// duration must look like one, or a name's last word would do.
	cutStepRe = regexp.MustCompile(`^  (done|ok|FAIL)\s+(.+?)\s+([0-9][0-9.]*(?:ms|µs|us|ns|h|m|s)(?:[0-9][0-9.]*(?:ms|µs|us|ns|m|s))*)  (.*)$`)
)

// runCeremony runs `tandem verb --config cfgPath`, reading its output as
// it comes so that ready runs the moment the ready line is printed (a
// rollback goes on to release the reverse slot after it).
func (e *cutEnv) runCeremony(ctx context.Context, verb, cfgPath string, ready func()) (*cutCeremony, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, verb, "--config", cfgPath)
	cmd.Env = cleanEnv("TANDEM_")
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start tandem %s: %w", verb, err)
	}
	waited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		pw.Close()
		waited <- err
	}()
	res := &cutCeremony{verb: verb}
	var parseErr error
	var out strings.Builder
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		out.WriteString(line + "\n")
		if m := cutReadyRe.FindStringSubmatch(line); m != nil && res.window == 0 {
			d, err := time.ParseDuration(m[1])
			if err != nil {
				parseErr = fmt.Errorf("tandem %s: unreadable window %q: %w", verb, m[1], err)
				continue
			}
			res.window = d
			ready()
			continue
		}
		if m := cutStepRe.FindStringSubmatch(line); m != nil {
			d, err := time.ParseDuration(strings.ReplaceAll(m[3], "us", "µs"))
			if err != nil {
				continue
			}
			switch {
			case m[1] == "ok":
				res.gates = append(res.gates, cutStep{name: m[2], detail: m[4], took: d})
			case res.window == 0:
				res.steps = append(res.steps, cutStep{name: m[2], detail: m[4], took: d})
			}
		}
	}
	// A line too long for the scanner must not leave the writer blocked.
	_, _ = io.Copy(io.Discard, pr)
	err := <-waited
	res.wall, res.out = time.Since(start), out.String()
	if err != nil {
		return res, fmt.Errorf("tandem %s: %w\n%s", verb, err, res.out)
	}
	if parseErr != nil {
		return res, fmt.Errorf("%w\n%s", parseErr, res.out)
	}
	if res.window == 0 {
		return res, fmt.Errorf("tandem %s printed no fence-to-ready line:\n%s", verb, res.out)
	}
	return res, nil
}

// lag is how long the lag gate's marker took to reach the other side:
// the stream's lag just before the fence.
func (c *cutCeremony) lag() time.Duration {
	return stepTook(c.gates, func(name string) bool { return strings.HasSuffix(name, "lag under cutover.max_lag") })
}

// finalCheck is the final check step's time, 0 if there was none.
func (c *cutCeremony) finalCheck() time.Duration {
	return stepTook(c.steps, func(name string) bool { return strings.HasPrefix(name, "final check") })
}

// stepTook is the time of the first step whose name match accepts.
func stepTook(steps []cutStep, match func(name string) bool) time.Duration {
	for _, s := range steps {
		if match(s.name) {
			return s.took
		}
	}
	return 0
}

// cutSteps renders a ceremony's window steps for its progress line.
func cutSteps(steps []cutStep) string {
	parts := make([]string, len(steps))
	for i, s := range steps {
		parts[i] = fmt.Sprintf("%s %s", s.name, cutDur(s.took))
	}
	return strings.Join(parts, ", ")
}

// cutDur rounds a duration for a table cell.
func cutDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(10 * time.Microsecond).String()
}

// cutStepNames lists the step names of several ceremonies in the order
// they first appear.
func cutStepNames(cs []*cutCeremony) []string {
	var names []string
	for _, c := range cs {
		for _, s := range c.steps {
			if !slices.Contains(names, s.name) {
				names = append(names, s.name)
			}
		}
	}
	return names
}
