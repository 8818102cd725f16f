// Command demo shows tandem end to end on one machine (make demo): two
// throwaway PostgreSQL clusters, an "orders" schema on the old one with
// three years of history (5,000 customers, 200,000 orders) and its new
// shape on the other, `tandem run` as a child process, and a writer playing
// the application. tandem copies the history (backfill) while it streams
// the writer's changes, which also hit historic rows. Every two seconds the
// demo prints the row counts on both sides, the backfill's progress or the
// phase, and the replication lag from tandem's metrics endpoint.
//
// Once the history is copied and the stream has run a while, the demo
// cuts over (tandem verify, tandem cutover), points the writer at the new
// database, where it writes in the new schema while tandem streams its
// changes back, then rolls back (tandem rollback) and points the writer at
// the old database again (switch.go). The writer retries what the fences
// refuse, as an application would.
//
// Ctrl-C (or TANDEM_DEMO_SECONDS) stops it in the order an operator would:
// the writer (a ceremony in progress finishes first), then (once the
// backfill is complete) an independent comparison, `tandem verify` and
// `tandem status`, then tandem (SIGTERM), then `tandem teardown`, then the
// clusters. It exits 0 after a clean stop, also when its output is gone
// (`make demo | tee log`, whose tee the same Ctrl-C ends). What a demo
// killed outright leaves behind is stopped and removed when the next one
// starts (stale.go).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
)

const (
	configPath = "configs/demo.yaml"
	binPath    = "bin/tandem"
	slotName   = "tandem_demo" // source.slot in configs/demo.yaml
	// stopTimeout covers apply.shutdown_timeout (10s by default) plus the
	// process's own exit.
	stopTimeout = 20 * time.Second
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

// demo holds what has been started, so cleanup stops exactly that.
type demo struct {
	root    string // repository root
	scratch string
	old     *pgcluster.Cluster
	new     *pgcluster.Cluster
	env     []string // TANDEM_* overrides for every tandem command
	metrics string   // host:port of tandem's metrics endpoint
	tandem  *exec.Cmd
	exited  chan struct{}
	logPath string
	started time.Time
	// tandemStarted is when `tandem run` started; bf is the backfill as
	// seen on the metrics endpoint.
	tandemStarted time.Time
	bf            backfillState
	// runFor, from TANDEM_DEMO_SECONDS, stops the demo that long after the
	// writer starts, so a slow first build does not eat the run; deadline
	// is when (zero: at Ctrl-C only).
	runFor   time.Duration
	deadline time.Time
}

func run() (err error) {
	d := &demo{started: time.Now()}
	// `make demo | tee log` and Ctrl-C: the terminal's SIGINT ends tee as
	// well, and the next line the demo prints goes to a closed pipe. By
	// default Go dies of SIGPIPE there, before the cleanup below, leaving
	// tandem and both clusters running with nobody to stop them. Ignored,
	// the write fails (the output is lost) and the stop goes on.
	signal.Ignore(syscall.SIGPIPE)
	// The first Ctrl-C starts an orderly stop; later ones must not cut the
	// cleanup short and leave servers running.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		s, ok := <-sigs
		if !ok {
			return
		}
		fmt.Printf("\n%s received: stopping\n", s)
		cancel()
		for range sigs {
			fmt.Println("still stopping; the clusters are removed in a moment")
		}
	}()
	if secs := os.Getenv("TANDEM_DEMO_SECONDS"); secs != "" {
		n, err := strconv.Atoi(secs)
		if err != nil || n <= 0 {
			return fmt.Errorf("TANDEM_DEMO_SECONDS=%q: want a positive number of seconds", secs)
		}
		d.runFor = time.Duration(n) * time.Second
	}

	if d.root, err = repoRoot(); err != nil {
		return err
	}
	removed, errs := removeStale("")
	for _, r := range removed {
		fmt.Println(r)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w\n(stop those processes and remove the directory by hand)", err)
	}
	if d.scratch, err = newScratch(""); err != nil {
		return err
	}
	defer func() {
		if cerr := d.cleanup(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()

	sum, err := d.start(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // interrupted while starting: nothing to show
		}
		return err
	}
	return d.stop(sum)
}

// summary collects what the final report says.
type summary struct {
	w         *writer
	writerErr error
	// ceremonies are the cutovers and rollbacks that completed; cutOver
	// says the writes are on the new database when the demo stops, and
	// switchErr is a ceremony that failed.
	ceremonies          []ceremonyResult
	cutOver, rolledBack bool
	skipped             bool // no time for them (TANDEM_DEMO_SECONDS)
	switchErr           error
	stopped             bool
	exitCode            int
	stopTook            time.Duration
	applied, back       float64
	agree               bool
	ordersRows          int64
	customers           int64
	verified            bool
}

// start brings everything up and runs until ctx ends.
func (d *demo) start(ctx context.Context) (*summary, error) {
	fmt.Println("tandem demo: two throwaway PostgreSQL clusters, an orders schema and its new shape")
	fmt.Printf("scratch directory %s\n", d.scratch)

	g, gctx := errgroup.WithContext(ctx)
	var history string
	g.Go(func() (err error) {
		if d.old, err = startCluster(gctx, d.scratch, "old", oldSchema); err != nil {
			return err
		}
		history, err = loadHistory(gctx, d.old)
		return err
	})
	g.Go(func() (err error) {
		d.new, err = startCluster(gctx, d.scratch, "new", newSchema)
		return err
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}
	fmt.Printf("old database: %s\nnew database: %s\n", d.old.DSN("postgres"), d.new.DSN("postgres"))
	fmt.Print(history)

	fmt.Printf("building %s\n", binPath)
	if err := d.build(ctx); err != nil {
		return nil, err
	}
	port, err := pgcluster.FreePort()
	if err != nil {
		return nil, err
	}
	d.metrics = fmt.Sprintf("127.0.0.1:%d", port)
	// The clusters' ports are only known now, so the checked-in config is
	// used as it is and the environment overrides what differs.
	d.env = []string{
		"TANDEM_SOURCE_DSN=" + d.old.DSN("postgres"),
		"TANDEM_TARGET_DSN=" + d.new.DSN("postgres"),
		"TANDEM_METRICS_LISTEN=" + d.metrics,
		// Its own socket, so that two demos at once, or a demo beside a
		// test, never meet (`tandem backfill` commands find it through
		// the same variable).
		"TANDEM_CONTROL_SOCKET=" + filepath.Join(d.scratch, "control.sock"),
	}
	fmt.Printf("config %s, with TANDEM_SOURCE_DSN, TANDEM_TARGET_DSN and TANDEM_METRICS_LISTEN=%s\n", configPath, d.metrics)

	out, err := d.tandemCmd(ctx, "validate")
	fmt.Print(indent("tandem validate: ", out))
	if err != nil {
		return nil, fmt.Errorf("tandem validate: %w", err)
	}
	if err := d.startTandem(); err != nil {
		return nil, err
	}
	fmt.Printf("tandem run started (pid %d), log %s\n", d.tandem.Process.Pid, d.logPath)
	fmt.Println("backfill on: tandem copies the history in chunks while it streams every change (configs/demo.yaml)")

	if err := d.waitStreaming(ctx); err != nil {
		return nil, err
	}
	fmt.Println("slot streaming; the writer starts now, changing historic rows too while they are copied")
	if d.runFor > 0 {
		d.deadline = time.Now().Add(d.runFor)
		fmt.Printf("running for %s (TANDEM_DEMO_SECONDS), or press Ctrl-C to stop\n", d.runFor)
		if d.runFor < backfillTakes+minSwitchWindow {
			fmt.Printf("  probably too short for the cutover and the rollback: they need %s after the backfill, which takes about %s\n", minSwitchWindow, backfillTakes)
		}
	} else {
		fmt.Println("press Ctrl-C to stop")
	}

	sum := &summary{w: newWriter(d.old, d.new)}
	writerCtx, stopWriter := context.WithCancel(ctx)
	defer stopWriter()
	writerDone := make(chan error, 1)
	go func() { writerDone <- sum.w.run(writerCtx) }()
	finish := func() (*summary, error) {
		stopWriter()
		if err := <-writerDone; err != nil {
			sum.writerErr = err
		}
		return sum, nil
	}

	// The fences end every application session, the status line's too:
	// these reconnect.
	mon := &monitor{old: &session{c: d.old}, new: &session{c: d.new}}
	defer mon.close()
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	// The backfill is watched more often than the status line, so its
	// duration is measured to a tenth of a second.
	bfTick := time.NewTicker(100 * time.Millisecond)
	defer bfTick.Stop()
	var deadline <-chan time.Time
	if !d.deadline.IsZero() {
		t := time.NewTimer(time.Until(d.deadline))
		defer t.Stop()
		deadline = t.C
	}
	// next fires when the cutover or the rollback is due; nil until the
	// backfill completes, and once both are done.
	var plan switchPlan
	var next <-chan time.Time
	schedule := func(at time.Time) {
		next = time.After(time.Until(at))
	}
	planned := false
	// stopAfterRollback: TANDEM_DEMO_SECONDS came while the writes were on
	// the new database; the rollback comes first, at its time, and the
	// stop a little after it.
	stopAfterRollback := false
	backfillDone := func() {
		if planned {
			return
		}
		planned = true
		bfTick.Stop()
		p, ok := d.planSwitch(time.Now())
		if !ok {
			sum.skipped = true
			return
		}
		plan = p
		schedule(plan.cutAt)
	}
	if d.watchBackfill() {
		backfillDone()
	}
	for {
		select {
		case <-bfTick.C:
			if d.watchBackfill() {
				backfillDone()
			}
		case <-next:
			next = nil
			wasCutOver := sum.cutOver
			var err error
			if wasCutOver {
				err = d.rollback(ctx, sum)
			} else {
				err = d.cutover(ctx, sum)
			}
			// The next status line comes 2s after the ceremony, not at
			// once for the tick that fell during it, and shows the phase
			// the daemon has followed by then.
			tick.Reset(2 * time.Second)
			if err != nil {
				sum.switchErr = err
				fmt.Printf("%5s  %v\n", d.elapsed(), err)
				return finish()
			}
			if ctx.Err() != nil {
				return finish()
			}
			switch {
			case !wasCutOver:
				back := time.Now().Add(plan.onNew)
				if !plan.relative && plan.backAt.After(back) {
					back = plan.backAt
				}
				schedule(back)
			case stopAfterRollback:
				// A few seconds on the old database again, then the stop.
				fmt.Printf("%5s  stopping in %s\n", d.elapsed(), minOnOld)
				deadline = time.After(minOnOld)
			}
		case <-deadline:
			deadline = nil
			if sum.cutOver {
				// The ceremonies took longer than planned. The writes go
				// back where they started before the stop, so the run
				// shows the whole round, and the writer gets its few
				// seconds on the new database first.
				fmt.Printf("%5s  TANDEM_DEMO_SECONDS reached while the writes are on the new database: the rollback comes first, then the stop\n", d.elapsed())
				stopAfterRollback = true
				continue
			}
			fmt.Println("\nTANDEM_DEMO_SECONDS reached: stopping")
			if !planned { // the backfill ran until the end
				sum.skipped = true
			}
			return finish()
		case <-ctx.Done():
			if sum.cutOver {
				fmt.Printf("%5s  the writes are on the new database; the stop leaves them there (teardown lifts the old database's fence)\n", d.elapsed())
			}
			return finish()
		case err := <-writerDone:
			if ctx.Err() != nil { // stopped by the same Ctrl-C
				sum.writerErr = err
				return sum, nil
			}
			return nil, fmt.Errorf("writer: %w", err)
		case <-d.exited:
			return nil, fmt.Errorf("tandem run exited on its own (%s); log tail:\n%s", d.tandem.ProcessState, tailFile(d.logPath, 15))
		case <-tick.C:
			if d.watchBackfill() {
				backfillDone()
			}
			d.status(ctx, mon, sum.w)
		}
	}
}

// stop winds down in the operator's order and checks the result.
func (d *demo) stop(sum *summary) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if sum.writerErr != nil {
		fmt.Printf("writer stopped with an error: %v\n", sum.writerErr)
	}
	fmt.Printf("writer stopped after %d transactions\n", sum.w.committed())
	// Stopped early: the history is not all on the new side yet. An
	// operator would not compare before the copy is complete either.
	if !d.waitBackfill(ctx, 2*time.Minute) {
		return fmt.Errorf("backfill not complete (%s); log tail:\n%s", d.bf.progress(), tailFile(d.logPath, 15))
	}
	fmt.Println("waiting for the stream to catch up, then comparing both databases")

	src, err := connect(ctx, d.old)
	if err != nil {
		return err
	}
	defer src.Close(context.Background())
	tgt, err := connect(ctx, d.new)
	if err != nil {
		return err
	}
	defer tgt.Close(context.Background())
	sum.agree, sum.ordersRows, sum.customers = d.waitAgree(ctx, src, tgt, 30*time.Second)
	if m, err := scrape(d.metrics); err == nil {
		sum.applied = m.direction("forward").sum("tandem_transactions_applied_total")
		sum.back = m.direction("reverse").sum("tandem_transactions_applied_total")
	}

	// What an operator runs before cutover: tandem's own check, separate
	// from the fingerprints above.
	out, verr := d.tandemCmd(ctx, "verify")
	fmt.Print(indent("tandem verify: ", out))
	sum.verified = verr == nil
	// And what they watch during a migration.
	out, serr := d.tandemCmd(ctx, "status")
	fmt.Print(indent("tandem status: ", out))
	if serr != nil {
		fmt.Printf("tandem status failed: %v\n", serr)
	}

	fmt.Println("stopping tandem (SIGTERM)")
	sum.exitCode, sum.stopTook, sum.stopped = d.stopTandem()
	out, err = d.tandemCmd(ctx, "teardown")
	fmt.Print(indent("tandem teardown: ", out))
	if err != nil {
		return fmt.Errorf("tandem teardown: %w", err)
	}

	fmt.Println()
	fmt.Println("summary")
	d.report(sum)
	switch {
	case !sum.agree:
		return errors.New("the new database does not match the old one")
	case !sum.verified:
		return errors.New("tandem verify did not confirm the new database")
	case !sum.stopped || sum.exitCode != 0:
		return fmt.Errorf("tandem did not stop cleanly (exit code %d)", sum.exitCode)
	case sum.writerErr != nil:
		return fmt.Errorf("writer: %w", sum.writerErr)
	case sum.switchErr != nil:
		return sum.switchErr
	}
	return nil
}

// report prints the summary's lines.
func (d *demo) report(sum *summary) {
	w := sum.w
	fmt.Printf("  ran %s; the writer committed %d transactions, %d on the old database and %d on the new (%d rows inserted, %d updated, %d deleted)\n",
		time.Since(d.started).Round(time.Second), w.committed(), w.txs[oldSide].Load(), w.txs[newSide].Load(),
		w.inserts.Load(), w.updates.Load(), w.deletes.Load())
	fmt.Printf("  backfill: %s\n", d.bf.report())
	fmt.Printf("  tandem applied %.0f source transactions old -> new and %.0f new -> old: the writer's (PostgreSQL does not send those that changed nothing), the backfill's watermarks and the ceremonies' markers\n",
		sum.applied, sum.back)
	outages := w.outagesSoFar()
	for _, c := range sum.ceremonies {
		// The writer's outage for this switch is the next one that ended
		// on the database the ceremony handed the writes to.
		to := map[string]side{"cutover": newSide, "rollback": oldSide}[c.verb]
		mine := "the writer was stopped before it wrote again"
		for i, o := range outages {
			if o.resumed == to {
				mine = fmt.Sprintf("the writer's own gap between commits: %s, %s refused", o.took.Round(10*time.Millisecond), plural(o.attempts, "attempt"))
				outages = outages[i+1:]
				break
			}
		}
		fmt.Printf("  %s: writes unavailable for %s (fence to ready, as tandem %s measured it; the whole ceremony took %s); %s\n",
			c.verb, c.unavailable, c.verb, c.took.Round(100*time.Millisecond), mine)
	}
	switch {
	case sum.skipped:
		fmt.Printf("  no cutover or rollback: TANDEM_DEMO_SECONDS left too little time after the backfill (they need %s)\n", minSwitchWindow)
	case len(sum.ceremonies) == 0 && sum.switchErr == nil:
		fmt.Println("  no cutover or rollback: stopped before the cutover was due")
	}
	if n := w.refusals(); n > 0 || len(sum.ceremonies) > 0 {
		fmt.Printf("  writes refused during the switch: %d (%d by the old database, %d by the new); the writer reconnected and retried each, in the schema of the database it was pointed at by then\n",
			n, w.refused[oldSide].Load(), w.refused[newSide].Load())
	}
	if sum.cutOver {
		fmt.Println("  stopped while cut over: the writes were on the new database, and teardown lifted the old database's fence")
	}
	if sum.switchErr != nil {
		fmt.Printf("  the switch failed: %v\n", sum.switchErr)
	}
	after := ""
	switch {
	case sum.rolledBack:
		after = " after the round trip"
	case sum.cutOver:
		after = " after the cutover"
	}
	if sum.agree {
		fmt.Printf("  old and new agree%s, history included: %d orders_v2 rows (old orders outside tenant 0, transformed) and %d customers, fingerprints equal\n", after, sum.ordersRows, sum.customers)
	} else {
		fmt.Println("  old and new DO NOT agree (see above)")
	}
	if sum.verified {
		fmt.Println("  tandem verify: the new schema equals the transformed old data")
	} else {
		fmt.Println("  tandem verify reported a problem (see above)")
	}
	if sum.stopped {
		fmt.Printf("  tandem exited with code %d %s after SIGTERM\n", sum.exitCode, sum.stopTook.Round(time.Millisecond))
	}
	fmt.Println("  replication slots and publications dropped; clusters removed next")
}

// loadHistory fills the old database with what exists before tandem
// starts (historySQL) and says what was loaded.
func loadHistory(ctx context.Context, c *pgcluster.Cluster) (string, error) {
	start := time.Now()
	if err := c.Exec(ctx, "postgres", historySQL); err != nil {
		return "", fmt.Errorf("load the history: %w", err)
	}
	took := time.Since(start)
	conn, err := c.Connect(ctx, "postgres")
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var customers, orders, kept, noPrefs, large int64
	var size string
	err = conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM customers), count(*), count(*) FILTER (WHERE tenant_id <> 0),
		count(*) FILTER (WHERE preferences IS NULL), count(*) FILTER (WHERE pg_column_size(preferences) > 2000),
		pg_size_pretty(pg_total_relation_size('orders') + pg_total_relation_size('customers')) FROM orders`).
		Scan(&customers, &orders, &kept, &noPrefs, &large, &size)
	if err != nil {
		return "", fmt.Errorf("count the history: %w", err)
	}
	return fmt.Sprintf("history on the old database (generate_series, %s): %d customers, %d orders, %s\n"+
		"  %d orders belong to the internal tenant 0 and stay behind, %d have no preferences (NULL), %d carry notes stored out of line\n",
		took.Round(100*time.Millisecond), customers, orders, size, orders-kept, noPrefs, large), nil
}

func startCluster(ctx context.Context, dir, name, schema string) (*pgcluster.Cluster, error) {
	c, err := pgcluster.Start(ctx, pgcluster.Options{Dir: dir, Name: name})
	if err != nil {
		return nil, fmt.Errorf("start the %s cluster: %w", name, err)
	}
	if err := c.Exec(ctx, "postgres", schema); err != nil {
		_ = c.Destroy(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("load the %s schema: %w", name, err)
	}
	return c, nil
}

func connect(ctx context.Context, c *pgcluster.Cluster) (*pgx.Conn, error) {
	return connectAs(ctx, c, "demo")
}

// connectAs names the session (application_name), so pg_stat_activity and
// the ceremonies' "application session(s) ended" tell the demo's writer
// and monitor apart.
func connectAs(ctx context.Context, c *pgcluster.Cluster, app string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, c.DSN("postgres")+"&application_name="+app)
	if err != nil {
		return nil, fmt.Errorf("connect to the %s database: %w", c.Name(), err)
	}
	// Both sides render timestamps alike for the fingerprints.
	if _, err := conn.Exec(ctx, "SET TimeZone = 'UTC'"); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("session settings: %w", err)
	}
	return conn, nil
}

// repoRoot finds the module root from the working directory, so the demo
// works from any subdirectory of the repository.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/tandem-migrate/tandem\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run the demo from the tandem repository (make demo)")
		}
		dir = parent
	}
}

func (d *demo) build(ctx context.Context) error {
	goBin := os.Getenv("GO") // the Makefile passes its $(GO)
	if goBin == "" {
		goBin = "go"
	}
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", binPath, "./cmd/tandem")
	cmd.Dir = d.root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/tandem: %w\n%s", err, out)
	}
	return nil
}

// childEnv drops the caller's own TANDEM_* settings so the demo runs the
// same everywhere, then adds the demo's.
func (d *demo) childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TANDEM_") {
			env = append(env, kv)
		}
	}
	return append(env, d.env...)
}

// tandemCmd runs a short tandem subcommand and returns what it printed:
// its report, and its log lines too when it failed.
func (d *demo) tandemCmd(ctx context.Context, sub string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(d.root, binPath), sub, "--config", configPath)
	cmd.Dir = d.root
	cmd.Env = d.childEnv()
	// A second Ctrl-C must not cut teardown short (see startTandem).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

func (d *demo) startTandem() error {
	d.logPath = filepath.Join(d.scratch, "tandem.log")
	logf, err := os.Create(d.logPath)
	if err != nil {
		return fmt.Errorf("tandem log: %w", err)
	}
	cmd := exec.Command(filepath.Join(d.root, binPath), "run", "--config", configPath)
	cmd.Dir = d.root
	cmd.Env = d.childEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: Ctrl-C in the terminal reaches only the demo,
	// which stops the writer first and then tandem, as an operator would.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	dieWithDemo(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start tandem run: %w", err)
	}
	if err := writePID(d.scratch, tandemPIDFile, cmd.Process.Pid); err != nil {
		fmt.Println(err) // only the next demo's clean-up would miss it
	}
	d.tandem, d.exited, d.tandemStarted = cmd, make(chan struct{}), time.Now()
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(d.exited)
	}()
	return nil
}

// stopTandem sends SIGTERM and waits; a daemon that does not exit in time
// is killed, which is safe (it resumes from its checkpoint) but reported.
func (d *demo) stopTandem() (code int, took time.Duration, clean bool) {
	if d.tandem == nil {
		return 0, 0, false
	}
	start := time.Now()
	select {
	case <-d.exited:
		return d.tandem.ProcessState.ExitCode(), 0, false
	default:
	}
	_ = d.tandem.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		return d.tandem.ProcessState.ExitCode(), time.Since(start), true
	case <-time.After(stopTimeout):
		fmt.Printf("tandem still running %s after SIGTERM; killing it\n", stopTimeout)
		_ = d.tandem.Process.Kill()
		<-d.exited
		return -1, time.Since(start), false
	}
}

// waitStreaming waits until tandem's walsender holds the slot: from then
// on every commit on the old database reaches the new one.
func (d *demo) waitStreaming(ctx context.Context) error {
	src, err := connect(ctx, d.old)
	if err != nil {
		return err
	}
	defer src.Close(context.Background())
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		var streaming bool
		err := src.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid
			WHERE s.slot_name = $1 AND a.backend_type = 'walsender' AND s.confirmed_flush_lsn IS NOT NULL)`, slotName).Scan(&streaming)
		if err != nil {
			return fmt.Errorf("look up slot %s: %w", slotName, err)
		}
		if streaming {
			return nil
		}
		d.watchBackfill() // it may start first: note when
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.exited:
			return fmt.Errorf("tandem run exited (%s); log tail:\n%s", d.tandem.ProcessState, tailFile(d.logPath, 15))
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("slot %s not streaming after a minute; log tail:\n%s", slotName, tailFile(d.logPath, 15))
}

type counts struct {
	customers, orders, ordersKept int64 // old
	newCustomers, ordersV2        int64 // new
}

func (m *monitor) counts(ctx context.Context) (counts, error) {
	var c counts
	err := m.old.query(ctx, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM customers), count(*), count(*) FILTER (WHERE tenant_id <> 0) FROM orders`).
			Scan(&c.customers, &c.orders, &c.ordersKept)
	})
	if err != nil {
		return c, fmt.Errorf("count on the old database: %w", err)
	}
	err = m.new.query(ctx, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM orders_v2)`).Scan(&c.newCustomers, &c.ordersV2)
	})
	if err != nil {
		return c, fmt.Errorf("count on the new database: %w", err)
	}
	return c, nil
}

// monitor is the demo's own view of both databases, for the status line.
type monitor struct{ old, new *session }

func (m *monitor) close() {
	m.old.close()
	m.new.close()
}

// session is a connection that comes back after a fence ended it, as an
// operator's psql would.
type session struct {
	c    *pgcluster.Cluster
	conn *pgx.Conn
}

// query runs fn, reconnecting once if the session was ended.
func (s *session) query(ctx context.Context, fn func(*pgx.Conn) error) error {
	for attempt := 0; ; attempt++ {
		if s.conn == nil || s.conn.IsClosed() {
			conn, err := connectAs(ctx, s.c, "demo-monitor")
			if err != nil {
				return err
			}
			s.conn = conn
		}
		err := fn(s.conn)
		if err == nil || attempt > 0 || !(refusedBySwitch(err) || s.conn.IsClosed()) {
			return err
		}
		s.close()
	}
}

func (s *session) close() {
	if s.conn != nil {
		s.conn.Close(context.Background())
		s.conn = nil
	}
}

// status prints one line: rows on both sides, the backfill's progress (the
// phase once it is done), tandem's view of the lag of the direction that
// phase streams, and where the writer writes.
func (d *demo) status(ctx context.Context, mon *monitor, w *writer) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := mon.counts(qctx)
	if err != nil {
		if ctx.Err() == nil {
			fmt.Println("status:", err)
		}
		return
	}
	stage, lag := "backfill "+d.bf.progress(), "lag n/a"
	if m, err := scrape(d.metrics); err == nil {
		phase, dir, name := m.phase(), "forward", "lag"
		if phase == "cutover" || phase == "rolling_back" {
			dir, name = "reverse", "reverse lag"
		}
		f := m.direction(dir)
		lag = fmt.Sprintf("%s %s %.1fs", name, bytesText(f.sum("tandem_replication_lag_bytes")), f.sum("tandem_replication_lag_seconds"))
		if d.bf.complete() && phase != "" {
			stage = "phase " + phase
		}
	}
	writes := fmt.Sprintf("writer on %s, %d tx", w.side(), w.committed())
	if n := w.refusals(); n > 0 {
		writes += fmt.Sprintf(" (%d refused)", n)
	}
	fmt.Printf("%5s  old: %d customers, %d orders (%d outside tenant 0) | new: %d customers, %d orders_v2 | %s | %s | %s\n",
		d.elapsed(), c.customers, c.orders, c.ordersKept, c.newCustomers, c.ordersV2, stage, lag, writes)
}

func (d *demo) elapsed() time.Duration { return time.Since(d.started).Round(time.Second) }

// waitAgree waits until the new side holds the transformed old data,
// compared by fingerprints computed independently on each side.
func (d *demo) waitAgree(ctx context.Context, src, tgt *pgx.Conn, timeout time.Duration) (ok bool, orders, customers int64) {
	deadline := time.Now().Add(timeout)
	for {
		var wantN, gotN, custN, custGotN int64
		var want, got, cust, custGot string
		err := errors.Join(
			src.QueryRow(ctx, expectedOrders).Scan(&wantN, &want),
			tgt.QueryRow(ctx, actualOrders).Scan(&gotN, &got),
			src.QueryRow(ctx, customerRows).Scan(&custN, &cust),
			tgt.QueryRow(ctx, customerRows).Scan(&custGotN, &custGot),
		)
		if err == nil && want == got && cust == custGot {
			return true, gotN, custGotN
		}
		if time.Now().After(deadline) {
			if err != nil {
				fmt.Printf("comparison failed: %v\n", err)
			} else {
				fmt.Printf("after %s: old says %d orders_v2 rows (md5 %s) and %d customers (%s); new has %d (%s) and %d (%s)\n",
					timeout, wantN, want, custN, cust, gotN, got, custGotN, custGot)
			}
			return false, gotN, custGotN
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// cleanup stops whatever was started, in reverse order, and removes the
// scratch directory. It runs on every exit path.
func (d *demo) cleanup() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	if d.tandem != nil {
		select {
		case <-d.exited:
		default:
			// Only on an error path: stop() stopped it otherwise. No
			// teardown: the clusters, slot included, go away next.
			d.stopTandem()
		}
	}
	for _, c := range []*pgcluster.Cluster{d.old, d.new} {
		if c == nil {
			continue
		}
		if err := c.Destroy(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if d.scratch != "" {
		if len(errs) > 0 {
			fmt.Printf("kept %s for inspection\n", d.scratch)
		} else if err := os.RemoveAll(d.scratch); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", d.scratch, err))
		}
	}
	if len(errs) == 0 && (d.old != nil || d.new != nil) {
		fmt.Println("clusters stopped and removed")
	}
	return errors.Join(errs...)
}

func bytesText(b float64) string {
	switch {
	case b >= 1<<20:
		return fmt.Sprintf("%.1fMB", b/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1fkB", b/(1<<10))
	}
	return fmt.Sprintf("%.0fB", b)
}

func indent(prefix, s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	lines := strings.Split(s, "\n")
	pad := strings.Repeat(" ", len(prefix))
	for i, l := range lines {
		switch {
		case i == 0:
			lines[i] = prefix + l
		case l != "":
			lines[i] = pad + l
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

func tailFile(path string, lines int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	b, _ := io.ReadAll(f)
	parts := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

func plural(n int64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
