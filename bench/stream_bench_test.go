package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
)

// streamSizes are the knobs of one run, sized so the whole benchmark takes
// a few minutes on a 2-core machine.
type streamSizes struct {
	scale       int // pgbench -s: 100k accounts per unit
	clients     int // pgbench -c, for the backlog and the lag load
	txPerClient int // pgbench -t of the backlog
	lagRate     int // pgbench -R (transactions/s) during the lag phase
	lagDuration time.Duration
	lagEvery    time.Duration // one probe row per interval
	rssRows     []int
}

func sizesFor(short bool) streamSizes {
	if short {
		return streamSizes{scale: 1, clients: 4, txPerClient: 500, lagRate: 100, lagDuration: 5 * time.Second,
			lagEvery: 100 * time.Millisecond, rssRows: []int{20_000, 100_000}}
	}
	return streamSizes{scale: 10, clients: 4, txPerClient: 20_000, lagRate: 200, lagDuration: 20 * time.Second,
		lagEvery: 100 * time.Millisecond, rssRows: []int{200_000, 1_000_000, 2_000_000}}
}

// drainTimeout bounds one drain; a stream that stalls fails instead of
// hanging the run.
const drainTimeout = 10 * time.Minute

// changesPerTx is what one TPC-B transaction changes: three UPDATEs
// (account, teller, branch) and one history INSERT.
const changesPerTx = 4

type drainResult struct {
	Tx      int64
	Changes int64
	LoadTPS float64 // how fast pgbench wrote the backlog
	Elapsed time.Duration
	CPU     cpuUse
	Waits   map[string]waitProfile // by side, see sampleWaits
	NewWAL  int64                  // bytes of WAL the new side wrote while applying
	// Tandem's own counters (zero for native).
	SourceTx, TargetCommits, AppliedChanges, CommitSeconds float64
}

func (d *drainResult) rate() float64 { return float64(d.Changes) / d.Elapsed.Seconds() }

type lagResult struct {
	Stats lagStats
	Load  pgbenchRun
	CPU   cpuUse
}

// streamResults collects every phase for the side-by-side summary.
type streamResults struct {
	tandemDrain, nativeDrain *drainResult
	tandemLag, nativeLag     *lagResult
	rss                      map[int]*rssResult
}

// BenchmarkStream measures tandem's streaming against PostgreSQL's own
// logical replication on the same pair of throwaway clusters, in one run:
//
//   - drain: a TPC-B backlog built while the replicator is stopped, then
//     timed until the new side holds every transaction; changes/s for
//     tandem and native, and their ratio.
//   - lag: commit-to-visible delay of probe rows under a steady,
//     rate-limited pgbench load, p50/p99, for tandem and native.
//   - rss: peak resident set of the tandem binary through one huge
//     transaction of 1 KiB rows, at several sizes, to show memory does not
//     grow with transaction size.
//
// Every phase checks afterwards that both sides hold the same rows: a fast
// stream that loses a row is not a result. Besides the figures, each phase
// says where the time went (CPU per process role from /proc, sampled wait
// events of the replicating processes) and how much CPU processes outside
// the benchmark took, since a shared 2-core machine makes that the main
// source of noise.
//
// Each phase runs its scenario once, whatever b.N (see once); run it as
// `make bench` or `go test -run '^$' -bench Stream -benchtime 1x ./bench/`.
// -short shrinks every size for a quick smoke run. TANDEM_CPUPROFILE=path
// writes a CPU profile of the in-process tandem during its drain.
func BenchmarkStream(b *testing.B) {
	pgbench := findPgbench()
	if pgbench == "" {
		b.Skip("pgbench not found: install it (Debian/Ubuntu: apt-get install postgresql, which ships /usr/lib/postgresql/<version>/bin/pgbench) or put it on PATH")
	}
	sz := sizesFor(testing.Short())
	env := setupStreamEnv(b, pgbench, sz)
	// Outlives the sub-benchmarks: the tandem binary is built once into it.
	dir := b.TempDir()
	res := &streamResults{rss: map[int]*rssResult{}}

	b.Run("drain", func(b *testing.B) {
		b.Run("tandem", func(b *testing.B) {
			r := once(b, &res.tandemDrain, env.drainTandem)
			reportDrain(b, r, env)
			b.Logf("tandem: %d source tx in %.0f target commits (%.1f per commit), %.0f changes applied, %.2fs in commit round trips",
				int64(r.SourceTx), r.TargetCommits, r.SourceTx/max(1, r.TargetCommits), r.AppliedChanges, r.CommitSeconds)
		})
		b.Run("native", func(b *testing.B) {
			r := once(b, &res.nativeDrain, env.drainNative)
			reportDrain(b, r, env)
			if res.tandemDrain != nil {
				b.ReportMetric(res.tandemDrain.rate()/r.rate(), "tandem/native")
			}
		})
	})
	b.Run("lag", func(b *testing.B) {
		b.Run("tandem", func(b *testing.B) { reportLag(b, once(b, &res.tandemLag, env.lagTandem), env) })
		b.Run("native", func(b *testing.B) { reportLag(b, once(b, &res.nativeLag, env.lagNative), env) })
	})
	b.Run("rss", func(b *testing.B) {
		for _, rows := range sz.rssRows {
			b.Run(rowsLabel(rows), func(b *testing.B) {
				r, ok := res.rss[rows]
				if !ok {
					b.ResetTimer()
					var err error
					if r, err = env.rssRun(b.Context(), dir, rows); err != nil {
						b.Fatal(err)
					}
					res.rss[rows] = r
				}
				b.ReportMetric(float64(r.PeakRSS)/(1<<20), "peak-RSS-MB")
				b.ReportMetric(float64(r.BaselineRSS)/(1<<20), "idle-RSS-MB")
				b.ReportMetric(float64(r.Rows)/r.ApplyTime.Seconds(), "rows/s")
				b.Logf("%d x 1 KiB rows in one transaction: peak RSS %.1f MB (idle %.1f MB); old side INSERT %.1fs, then applied in %.1fs (%.0f rows/s), tandem CPU %.1fs",
					r.Rows, float64(r.PeakRSS)/(1<<20), float64(r.BaselineRSS)/(1<<20), r.InsertTime.Seconds(), r.ApplyTime.Seconds(),
					float64(r.Rows)/r.ApplyTime.Seconds(), r.CPU.Seconds())
			})
		}
	})
	res.print(os.Stdout, env)
}

// once runs a phase the first time its benchmark function is called and
// returns that result on later calls. The framework calls a function again
// when -benchtime asks for more than one iteration; repeating a scenario of
// minutes would add nothing, and the reported figures are per scenario, not
// per b.N.
func once[T any](b *testing.B, cached **T, run func(*testing.B) (*T, error)) *T {
	b.Helper()
	if *cached == nil {
		r, err := run(b)
		if err != nil {
			b.Fatal(err)
		}
		*cached = r
	}
	return *cached
}

func findPgbench() string {
	// The server's own pgbench first: same major version as the clusters.
	if dir, err := pgcluster.FindBinDir(); err == nil {
		p := filepath.Join(dir, "pgbench")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p
	}
	return ""
}

func rowsLabel(rows int) string {
	switch {
	case rows%1_000_000 == 0:
		return strconv.Itoa(rows/1_000_000) + "M"
	case rows%1000 == 0:
		return strconv.Itoa(rows/1000) + "k"
	}
	return strconv.Itoa(rows)
}

func reportDrain(b *testing.B, r *drainResult, e *streamEnv) {
	b.ReportMetric(r.rate(), "changes/s")
	b.ReportMetric(r.Elapsed.Seconds(), "drain-s")
	b.ReportMetric(r.CPU.Total(e.new.Name()).Seconds(), "new-cpu-s")
	b.ReportMetric(r.CPU.Total(e.old.Name()).Seconds(), "old-cpu-s")
	b.Logf("drained %d tx = %d changes in %.2fs: %.0f changes/s; CPU: old %s, new %s, benchmark process %.1fs",
		r.Tx, r.Changes, r.Elapsed.Seconds(), r.rate(), r.CPU.Describe(e.old.Name()), r.CPU.Describe(e.new.Name()), r.CPU.Self.Seconds())
	b.Logf("new side: %.1f us CPU and %.0f bytes of WAL per change", float64(r.CPU.Total(e.new.Name()).Microseconds())/float64(r.Changes),
		float64(r.NewWAL)/float64(r.Changes))
	b.Logf("sampled states: old walsender: %s; new applying backend: %s", r.Waits[e.old.Name()], r.Waits[e.new.Name()])
	logNoise(b, r.CPU, r.Elapsed)
}

func reportLag(b *testing.B, r *lagResult, e *streamEnv) {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(r.Stats.P50), "p50-ms")
	b.ReportMetric(ms(r.Stats.P99), "p99-ms")
	b.ReportMetric(ms(r.Stats.Max), "max-ms")
	b.Logf("lag %s under pgbench at %.0f tps; CPU: old %s, new %s, benchmark process %.1fs, pgbench %.1fs",
		r.Stats, r.Load.tps, r.CPU.Describe(e.old.Name()), r.CPU.Describe(e.new.Name()), r.CPU.Self.Seconds(), r.CPU.Children.Seconds())
	logNoise(b, r.CPU, e.sizes.lagDuration)
}

// noiseShare is the share of the machine's CPU capacity that processes
// outside the benchmark used during a window of wall time.
func noiseShare(u cpuUse, wall time.Duration) float64 {
	return u.Other().Seconds() / (wall.Seconds() * float64(runtime.NumCPU()))
}

// logNoise warns when other users of the shared machine took enough CPU to
// bend the figure: a 2-core box has no slack to hide them in.
func logNoise(b *testing.B, u cpuUse, wall time.Duration) {
	share := noiseShare(u, wall)
	b.ReportMetric(100*share, "noise-%")
	if share > 0.10 {
		b.Logf("WARNING: processes outside the benchmark used %.1fs of CPU (%.0f%% of the machine) during this window; the figure is noisy, run again on a quiet machine", u.Other().Seconds(), 100*share)
	}
}

// startProfile writes a CPU profile of this process, which hosts the
// tandem pipeline, to $TANDEM_CPUPROFILE; the returned func stops it.
func startProfile(b *testing.B) func() {
	path := os.Getenv("TANDEM_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		b.Logf("TANDEM_CPUPROFILE: %v", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		// -cpuprofile already profiles the whole run.
		b.Logf("TANDEM_CPUPROFILE: %v", err)
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			b.Logf("TANDEM_CPUPROFILE: %v", err)
			return
		}
		b.Logf("CPU profile of the tandem drain written to %s (go tool pprof -top %s)", path, path)
	}
}

// drainTandem: create tandem's slot, stop tandem, write the backlog, then
// time a fresh tandem from start until the new side has every transaction.
func (e *streamEnv) drainTandem(b *testing.B) (_ *drainResult, err error) {
	ctx := b.Context()
	cfg, err := e.tandemConfig("drain", pgbenchTables...)
	if err != nil {
		return nil, err
	}
	var t *inprocTandem
	defer func() {
		if t != nil {
			_ = t.stop()
		}
		if terr := e.teardownTandem(context.WithoutCancel(ctx), cfg); terr != nil && err == nil {
			err = terr
		}
	}()
	if err := e.primeSlot(ctx, cfg); err != nil {
		return nil, err
	}

	bl, err := e.backlog(ctx, b, "tandem")
	if err != nil {
		return nil, err
	}
	load, mark, stopWaits, walBefore := bl.load, bl.mark, bl.stopWaits, bl.walBefore
	stopProfile := startProfile(b)
	before := sampleCPU(e.old, e.new)
	b.ResetTimer()
	start := time.Now()
	t = startInproc(cfg)
	werr := e.waitHistory(ctx, mark, t.alive, drainTimeout)
	elapsed := time.Since(start)
	b.StopTimer()
	cpu := sampleCPU(e.old, e.new).since(before)
	stopProfile()
	waits := stopWaits()
	if werr != nil {
		return nil, werr
	}
	walAfter, err := e.newWAL(ctx)
	if err != nil {
		return nil, err
	}
	r := &drainResult{
		Tx: load.tx, Changes: load.tx * changesPerTx, LoadTPS: load.tps, Elapsed: elapsed, CPU: cpu, Waits: waits, NewWAL: walAfter - walBefore,
		SourceTx:       t.metric("tandem_transactions_applied_total"),
		TargetCommits:  t.metric("tandem_target_commits_total"),
		AppliedChanges: t.metric("tandem_changes_applied_total"),
		CommitSeconds:  t.metric("tandem_target_commit_seconds"),
	}
	if err := t.stop(); err != nil {
		return nil, fmt.Errorf("stop tandem: %w", err)
	}
	t = nil
	if err := e.compare(ctx, pgbenchTables...); err != nil {
		return nil, fmt.Errorf("after the tandem drain: %w", err)
	}
	return r, nil
}

// drainNative: the same backlog through a subscription that is created
// disabled (its slot exists from then on) and enabled when timing starts.
// The end point is the same history count as for tandem.
func (e *streamEnv) drainNative(b *testing.B) (_ *drainResult, err error) {
	ctx := b.Context()
	const sub = "native_drain"
	if err := e.createSubscription(ctx, sub, pgbenchTables, false); err != nil {
		return nil, err
	}
	defer func() {
		if derr := e.dropSubscription(context.WithoutCancel(ctx), sub); derr != nil && err == nil {
			err = derr
		}
	}()
	bl, err := e.backlog(ctx, b, "native")
	if err != nil {
		return nil, err
	}
	load, mark, stopWaits, walBefore := bl.load, bl.mark, bl.stopWaits, bl.walBefore
	before := sampleCPU(e.old, e.new)
	b.ResetTimer()
	start := time.Now()
	if _, err := e.newDB.Exec(ctx, "ALTER SUBSCRIPTION "+sub+" ENABLE"); err != nil {
		stopWaits()
		return nil, fmt.Errorf("enable subscription: %w", err)
	}
	werr := e.waitHistory(ctx, mark, alwaysAlive, drainTimeout)
	elapsed := time.Since(start)
	b.StopTimer()
	cpu := sampleCPU(e.old, e.new).since(before)
	waits := stopWaits()
	if werr != nil {
		return nil, fmt.Errorf("%w\n%s", werr, e.serverLogs())
	}
	walAfter, err := e.newWAL(ctx)
	if err != nil {
		return nil, err
	}
	if err := e.compare(ctx, pgbenchTables...); err != nil {
		return nil, fmt.Errorf("after the native drain: %w\n%s", err, e.serverLogs())
	}
	return &drainResult{Tx: load.tx, Changes: load.tx * changesPerTx, LoadTPS: load.tps, Elapsed: elapsed, CPU: cpu, Waits: waits,
		NewWAL: walAfter - walBefore}, nil
}

// lagTables are replicated during the lag phases: the load and the probes.
var lagTables = append(slices.Clip(pgbenchTables), "lagprobe")

// lagTandem measures probe lag with tandem streaming live.
func (e *streamEnv) lagTandem(b *testing.B) (_ *lagResult, err error) {
	ctx := b.Context()
	cfg, err := e.tandemConfig("lag", lagTables...)
	if err != nil {
		return nil, err
	}
	if err := e.settle(ctx); err != nil {
		return nil, err
	}
	t := startInproc(cfg)
	defer func() {
		_ = t.stop()
		if terr := e.teardownTandem(context.WithoutCancel(ctx), cfg); terr != nil && err == nil {
			err = terr
		}
	}()
	if err := e.waitSlot(ctx, cfg.Source.Slot, t.alive, time.Minute); err != nil {
		return nil, err
	}
	b.ResetTimer()
	before := sampleCPU(e.old, e.new)
	stats, load, err := e.measureLag(ctx, 1+e.probeOffset, t.alive)
	if err != nil {
		return nil, err
	}
	cpu := sampleCPU(e.old, e.new).since(before)
	b.StopTimer()
	if err := e.caughtUp(ctx, t.alive); err != nil {
		return nil, fmt.Errorf("after the tandem lag run: %w", err)
	}
	return &lagResult{Stats: stats, Load: load, CPU: cpu}, nil
}

// lagNative measures probe lag with a live subscription.
func (e *streamEnv) lagNative(b *testing.B) (_ *lagResult, err error) {
	ctx := b.Context()
	const sub = "native_lag"
	if err := e.settle(ctx); err != nil {
		return nil, err
	}
	if err := e.createSubscription(ctx, sub, lagTables, true); err != nil {
		return nil, err
	}
	defer func() {
		if derr := e.dropSubscription(context.WithoutCancel(ctx), sub); derr != nil && err == nil {
			err = derr
		}
	}()
	if err := e.waitSlot(ctx, sub, alwaysAlive, time.Minute); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, e.serverLogs())
	}
	b.ResetTimer()
	before := sampleCPU(e.old, e.new)
	// Probe ids of the native run follow the tandem run's in the same table.
	stats, load, err := e.measureLag(ctx, 1_000_000, alwaysAlive)
	if err != nil {
		return nil, fmt.Errorf("%w\n%s", err, e.serverLogs())
	}
	cpu := sampleCPU(e.old, e.new).since(before)
	b.StopTimer()
	if err := e.caughtUp(ctx, alwaysAlive); err != nil {
		return nil, fmt.Errorf("after the native lag run: %w\n%s", err, e.serverLogs())
	}
	return &lagResult{Stats: stats, Load: load, CPU: cpu}, nil
}

// caughtUp waits for the rest of a live load to arrive and checks both
// sides are equal.
func (e *streamEnv) caughtUp(ctx context.Context, alive func() error) error {
	mark, err := e.historyMark(ctx)
	if err != nil {
		return err
	}
	if err := e.waitHistory(ctx, mark, alive, time.Minute); err != nil {
		return err
	}
	return e.compare(ctx, lagTables...)
}

func perChange(d *drainResult, e *streamEnv) string {
	return fmt.Sprintf("%.1f us CPU, %.0f B WAL", float64(d.CPU.Total(e.new.Name()).Microseconds())/float64(d.Changes), float64(d.NewWAL)/float64(d.Changes))
}

func noiseCell(u cpuUse, wall time.Duration) string {
	return fmt.Sprintf("%.1fs (%.0f%%)", u.Other().Seconds(), 100*noiseShare(u, wall))
}

// print writes the side-by-side summary of everything that ran.
func (r *streamResults) print(out io.Writer, e *streamEnv) {
	sz := e.sizes
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	defer w.Flush()
	fmt.Fprintln(w, "\n=== tandem streaming vs PostgreSQL native logical replication (one run) ===")
	if t, n := r.tandemDrain, r.nativeDrain; t != nil || n != nil {
		ref := t
		if ref == nil {
			ref = n
		}
		fmt.Fprintf(w, "\nBacklog drain: %d TPC-B transactions = %d row changes (pgbench -s %d -n -c %d -t %d), backlog built while the replicator was stopped\n",
			ref.Tx, ref.Changes, sz.scale, sz.clients, sz.txPerClient)
		fmt.Fprintln(w, "\ttandem\tnative\ttandem/native")
		cell := func(d *drainResult, f func(*drainResult) string) string {
			if d == nil {
				return "-"
			}
			return f(d)
		}
		ratio := "-"
		if t != nil && n != nil {
			ratio = fmt.Sprintf("%.2fx", t.rate()/n.rate())
		}
		fmt.Fprintf(w, "  changes/s\t%s\t%s\t%s\n", cell(t, func(d *drainResult) string { return fmt.Sprintf("%.0f", d.rate()) }),
			cell(n, func(d *drainResult) string { return fmt.Sprintf("%.0f", d.rate()) }), ratio)
		fmt.Fprintf(w, "  drain time\t%s\t%s\t\n", cell(t, func(d *drainResult) string { return fmt.Sprintf("%.2fs", d.Elapsed.Seconds()) }),
			cell(n, func(d *drainResult) string { return fmt.Sprintf("%.2fs", d.Elapsed.Seconds()) }))
		fmt.Fprintf(w, "  backlog written at\t%s\t%s\t\n", cell(t, func(d *drainResult) string { return fmt.Sprintf("%.0f tps", d.LoadTPS) }),
			cell(n, func(d *drainResult) string { return fmt.Sprintf("%.0f tps", d.LoadTPS) }))
		for _, side := range []string{"old", "new"} {
			fmt.Fprintf(w, "  CPU %s side\t%s\t%s\t\n", side,
				cell(t, func(d *drainResult) string { return d.CPU.Describe(side) }),
				cell(n, func(d *drainResult) string { return d.CPU.Describe(side) }))
		}
		fmt.Fprintf(w, "  new side per change\t%s\t%s\t\n",
			cell(t, func(d *drainResult) string { return perChange(d, e) }), cell(n, func(d *drainResult) string { return perChange(d, e) }))
		for _, side := range []string{"old", "new"} {
			fmt.Fprintf(w, "  %s side states\t%s\t%s\t\n", side,
				cell(t, func(d *drainResult) string { return d.Waits[side].String() }),
				cell(n, func(d *drainResult) string { return d.Waits[side].String() }))
		}
		fmt.Fprintf(w, "  noise: other CPU on the machine\t%s\t%s\t\n",
			cell(t, func(d *drainResult) string { return noiseCell(d.CPU, d.Elapsed) }),
			cell(n, func(d *drainResult) string { return noiseCell(d.CPU, d.Elapsed) }))
		fmt.Fprintf(w, "  CPU tandem process\t%s\t%s\t\n", cell(t, func(d *drainResult) string { return fmt.Sprintf("%.1fs", d.CPU.Self.Seconds()) }), "n/a")
		if t != nil {
			fmt.Fprintf(w, "  source tx per target commit\t%.1f\t1 (apply worker)\t\n", t.SourceTx/max(1, t.TargetCommits))
		}
	}
	if t, n := r.tandemLag, r.nativeLag; t != nil || n != nil {
		fmt.Fprintf(w, "\nLag under load: pgbench -R %d for %s, one probe row every %s; old-side commit acknowledged -> committed on the new side (NOTIFY)\n",
			sz.lagRate, sz.lagDuration, sz.lagEvery)
		fmt.Fprintln(w, "\ttandem\tnative\t")
		ms := func(l *lagResult, f func(lagStats) time.Duration) string {
			if l == nil {
				return "-"
			}
			return fmt.Sprintf("%.1f ms", float64(f(l.Stats))/float64(time.Millisecond))
		}
		fmt.Fprintf(w, "  p50\t%s\t%s\t\n", ms(t, func(s lagStats) time.Duration { return s.P50 }), ms(n, func(s lagStats) time.Duration { return s.P50 }))
		fmt.Fprintf(w, "  p99\t%s\t%s\t\n", ms(t, func(s lagStats) time.Duration { return s.P99 }), ms(n, func(s lagStats) time.Duration { return s.P99 }))
		fmt.Fprintf(w, "  max\t%s\t%s\t\n", ms(t, func(s lagStats) time.Duration { return s.Max }), ms(n, func(s lagStats) time.Duration { return s.Max }))
		count := func(l *lagResult) string {
			if l == nil {
				return "-"
			}
			return fmt.Sprintf("%d probes @ %.0f tps", l.Stats.N, l.Load.tps)
		}
		fmt.Fprintf(w, "  samples\t%s\t%s\t\n", count(t), count(n))
		noise := func(l *lagResult) string {
			if l == nil {
				return "-"
			}
			return noiseCell(l.CPU, sz.lagDuration)
		}
		fmt.Fprintf(w, "  noise: other CPU on the machine\t%s\t%s\t\n", noise(t), noise(n))
	}
	if len(r.rss) > 0 {
		fmt.Fprintln(w, "\nPeak RSS of the tandem process through one transaction of 1 KiB rows (VmHWM of `tandem run`)")
		fmt.Fprintln(w, "  rows\tidle RSS\tpeak RSS\tapply time\trows/s\ttandem CPU")
		for _, rows := range sz.rssRows {
			x, ok := r.rss[rows]
			if !ok {
				continue
			}
			fmt.Fprintf(w, "  %d\t%.1f MB\t%.1f MB\t%.1fs\t%.0f\t%.1fs\n", x.Rows, float64(x.BaselineRSS)/(1<<20), float64(x.PeakRSS)/(1<<20),
				x.ApplyTime.Seconds(), float64(x.Rows)/x.ApplyTime.Seconds(), x.CPU.Seconds())
		}
	}
	fmt.Fprintln(w)
}

// backlog is a TPC-B backlog written while the replicator is stopped, and
// the measurement started on it.
type backlog struct {
	load      pgbenchRun
	mark      historyMark
	stopWaits func() map[string]waitProfile
	walBefore int64
}

// backlog writes the backlog both drains are timed on, the same way for
// tandem and for native replication, and starts sampling wait events.
func (e *streamEnv) backlog(ctx context.Context, b *testing.B, who string) (*backlog, error) {
	if err := e.settle(ctx); err != nil {
		return nil, err
	}
	load, err := e.loadBacklog(ctx)
	if err != nil {
		return nil, err
	}
	mark, err := e.historyMark(ctx)
	if err != nil {
		return nil, err
	}
	if err := e.checkpointBoth(ctx); err != nil {
		return nil, err
	}
	b.Logf("%s backlog: %d TPC-B transactions written at %.0f tps", who, load.tx, load.tps)
	stopWaits, err := e.watchWaits(ctx)
	if err != nil {
		return nil, err
	}
	walBefore, err := e.newWAL(ctx)
	if err != nil {
		stopWaits()
		return nil, err
	}
	return &backlog{load: load, mark: mark, stopWaits: stopWaits, walBefore: walBefore}, nil
}
