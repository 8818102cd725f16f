package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/tandem-migrate/tandem/internal/testkit"
)

// BenchmarkCutover is issue 9's acceptance item: the write-unavailability
// window of `tandem cutover` (and of `tandem rollback`) under pgbench load.
//
// The old database holds pgbench's TPC-B tables; the new one the same
// tables with pgbench_accounts.abalance renamed to balance. The real
// `tandem run` streams between them. Then, cycle after cycle: pgbench
// (-c 8 -j 2, TPC-B) loads the authoritative database, a client of the
// benchmark's own writes there once a millisecond, and `tandem cutover`
// runs; when it prints ready the client moves to the new database and
// pgbench restarts there (the fence has ended its sessions), then `tandem
// rollback` moves both back. Each ceremony is a sample of two figures:
//
//   - tandem's own fence-to-ready time, as it prints it;
//   - the client's write gap: its last commit acknowledged on the database
//     it left to its first one acknowledged on the one it moved to.
//
// Both, median and max, with the applications' databases at
// synchronous_commit on and off, and cutover.verify changed and none (the
// final check runs inside the window). Every step of each ceremony is
// timed too, so the table says which one the window is made of.
//
// Run alone with: go test -run '^$' -bench Cutover -benchtime 1x -timeout 30m ./bench/
// -short runs a smaller table, fewer cycles and two settings.
func BenchmarkCutover(b *testing.B) {
	pgbench := findPgbench()
	if pgbench == "" {
		b.Skip("pgbench not found: install it (Debian/Ubuntu: apt-get install postgresql) or put it on PATH")
	}
	begin := time.Now()
	sz := cutSizesFor(testing.Short())
	env := setupCutEnv(b, pgbench, sz.scale, []string{"changed", "none"})
	fmt.Printf("\n--- cutover: pgbench -i -s %d on the old database, then ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY (tandem needs a key; pgbench's history has none); new schema renames pgbench_accounts.abalance to balance ---\n", sz.scale)
	fmt.Printf("setup: %s\n", cutSteps(env.setup))

	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	w := newCutWriter(env)
	go w.start(ctx)
	defer func() {
		cancel()
		<-w.done
	}()

	budget := cutBudget
	if v := os.Getenv("TANDEM_CUTOVER_BUDGET"); v != "" {
		var err error
		if budget, err = time.ParseDuration(v); err != nil {
			b.Fatalf("TANDEM_CUTOVER_BUDGET: %v", err)
		}
	}
	var rows []*cutRow
	var skipped []string
	for i, cfg := range sz.configs {
		// A setting starts only if it should end within the budget, with
		// time left for the check at the end, which verifies every table
		// once more: as long as a final check, or the setup's verify.
		reserve := max(stepTook(env.setup, func(name string) bool { return name == "verify" }), cutChecks(rows).P50)
		if est := cutEstimate(rows, cfg, sz); i > 0 && time.Since(begin)+est+reserve > budget {
			skipped = append(skipped, cfg.String())
			fmt.Printf("(skipping %s: %s spent of the %s budget, and it would take about %s)\n", cfg, time.Since(begin).Round(time.Second), budget, est.Round(time.Second))
			continue
		}
		if err := env.setSync(ctx, cfg.sync); err != nil {
			b.Fatal(err)
		}
		w.fresh.Store(true)
		cut, back := &cutRow{cfg: cfg, verb: "cutover"}, &cutRow{cfg: cfg, verb: "rollback"}
		rows = append(rows, cut, back)
		for n := 1; n <= sz.cycles; n++ {
			for _, h := range []struct {
				row      *cutRow
				from, to testkit.Side
			}{{cut, testkit.OldSide, testkit.NewSide}, {back, testkit.NewSide, testkit.OldSide}} {
				s, err := env.half(ctx, cfg, h.row.verb, h.from, h.to, sz.warm, w)
				if err != nil {
					b.Fatalf("%s, %s %d: %v", cfg, h.row.verb, n, err)
				}
				h.row.samples = append(h.row.samples, s)
				fmt.Printf("[%s] %s %d/%d: tandem %s, client gap %s, %d writes refused, pgbench %.0f tps, lag gate %s, ceremony %s, others' CPU %.0f%%; %s\n",
					cfg, h.row.verb, n, sz.cycles, cutDur(s.c.window), cutDur(s.gap.gap()), s.refused, s.tps, cutDur(s.c.lag()), cutDur(s.c.wall), 100*s.noise, cutSteps(s.c.steps))
			}
		}
	}
	cancel()
	<-w.done
	if w.err != nil {
		b.Fatal(w.err)
	}
	end, err := env.endCheck(b.Context(), w)
	if err != nil {
		b.Fatal(err)
	}
	if len(rows) > 0 {
		first := rows[0:2]
		b.ReportMetric(ms(summarise(first[0].windows()).P50), "cutover-p50-ms")
		b.ReportMetric(ms(summarise(first[0].gaps()).P50), "cutover-gap-p50-ms")
		b.ReportMetric(ms(summarise(first[1].windows()).P50), "rollback-p50-ms")
		b.ReportMetric(ms(summarise(first[1].gaps()).P50), "rollback-gap-p50-ms")
	}
	printCutSummary(os.Stdout, sz, env.setup, rows, skipped, end, time.Since(begin))
}

// cutBudget bounds the run: a setting that would end after it is
// skipped. What fits depends on the machine: the final check reads every
// row, and on a machine shared with other work it slows most, so the last
// settings go first. TANDEM_CUTOVER_BUDGET (a duration) overrides it.
const cutBudget = 6 * time.Minute

// cutChecks summarises the final checks so far.
func cutChecks(rows []*cutRow) lagStats {
	var check []time.Duration
	for _, r := range rows {
		for _, s := range r.samples {
			if fc := s.c.finalCheck(); fc > 0 {
				check = append(check, fc)
			}
		}
	}
	return summarise(check)
}

// cutEstimate predicts how long a setting's cycles take from the samples
// so far: per cycle, two warm-ups and both ceremonies, whose final check
// counts only if this setting runs one.
func cutEstimate(rows []*cutRow, cfg cutConfig, sz cutSizes) time.Duration {
	var cut, back []time.Duration
	for _, r := range rows {
		for _, s := range r.samples {
			if r.verb == "rollback" {
				back = append(back, s.c.wall)
				continue
			}
			cut = append(cut, s.c.wall-s.c.finalCheck())
		}
	}
	per := 2*sz.warm + summarise(cut).P50 + summarise(back).P50
	if cfg.verify != "none" {
		// The slowest: the final check reads every row, and one run
		// of it has been seen to take four times another as the
		// machine's other load came and went.
		per += cutChecks(rows).Max
	}
	return time.Duration(sz.cycles) * per
}

// cutConfig is one setting of the table.
type cutConfig struct {
	sync   string // synchronous_commit of the application databases
	verify string // cutover.verify
}

func (c cutConfig) String() string { return "sync " + c.sync + ", verify " + c.verify }

type cutSizes struct {
	scale   int // pgbench -s: 100k accounts each
	cycles  int // cutover + rollback pairs per setting
	warm    time.Duration
	configs []cutConfig
}

func cutSizesFor(short bool) cutSizes {
	if short {
		return cutSizes{scale: 1, cycles: 2, warm: time.Second, configs: []cutConfig{{"on", "changed"}, {"off", "none"}}}
	}
	// The final check is the only step cutover.verify changes, and it
	// reads two databases nobody writes to, so synchronous_commit cannot
	// matter to it; the streams it does matter to are timed in every
	// setting. The default (changed) runs first; both synchronous_commit
	// settings are then compared without the final check, whose minutes
	// would otherwise take the budget (it is O(rows): under TPC-B every
	// table is written between cutovers, so changed checks all of them);
	// the fourth combination runs if the budget allows.
	return cutSizes{scale: 10, cycles: 5, warm: 2 * time.Second,
		configs: []cutConfig{{"on", "changed"}, {"on", "none"}, {"off", "none"}, {"off", "changed"}}}
}

// cutSample is one ceremony under load.
type cutSample struct {
	c       *cutCeremony
	gap     cutGap
	refused int64   // client writes refused meanwhile
	tps     float64 // pgbench's median one-second rate before the fence
	// noise is the share of the machine's CPU that processes outside the
	// benchmark used from the load's start to its end: on a shared 2-core
	// machine the main reason one sample differs from the next.
	noise float64
}

// cutRow is one ceremony in one setting, every sample of it.
type cutRow struct {
	cfg     cutConfig
	verb    string
	samples []cutSample
}

func (r *cutRow) windows() []time.Duration {
	return r.each(func(s cutSample) time.Duration { return s.c.window })
}

func (r *cutRow) lags() []time.Duration {
	return r.each(func(s cutSample) time.Duration { return s.c.lag() })
}

func (r *cutRow) gaps() []time.Duration {
	return r.each(func(s cutSample) time.Duration { return s.gap.gap() })
}

func (r *cutRow) each(f func(cutSample) time.Duration) []time.Duration {
	out := make([]time.Duration, len(r.samples))
	for i, s := range r.samples {
		out[i] = f(s)
	}
	return out
}

// step is one window step's durations across the samples; the remainder
// of the window (the lifecycle row saved after each step) is "other".
func (r *cutRow) step(name string) []time.Duration {
	var out []time.Duration
	for _, s := range r.samples {
		var d time.Duration
		for _, st := range s.c.steps {
			if name == "" || st.name == name {
				d += st.took
			}
		}
		if name == "" {
			d = s.c.window - d
		}
		out = append(out, d)
	}
	return out
}

// checkRate is the final check's median speed in rows/s, from the rows
// it says it compared; 0 when it compared none.
func (r *cutRow) checkRate() float64 {
	var rates []float64
	for _, s := range r.samples {
		for _, st := range s.c.steps {
			if m := cutCheckedRe.FindStringSubmatch(st.detail); m != nil && strings.HasPrefix(st.name, "final check") && st.took > 0 {
				n, _ := strconv.ParseFloat(m[1], 64)
				rates = append(rates, n/st.took.Seconds())
			}
		}
	}
	return median(rates)
}

// cutCheckedRe reads the final check's "4 table(s), 1000123 rows equal".
var cutCheckedRe = regexp.MustCompile(`(\d+) rows equal`)

func (r *cutRow) ceremonies() []*cutCeremony {
	out := make([]*cutCeremony, len(r.samples))
	for i, s := range r.samples {
		out[i] = s.c
	}
	return out
}

// dominant is the step with the largest median and its share of the
// median window.
func (r *cutRow) dominant() (string, time.Duration, float64) {
	var name string
	var most time.Duration
	for _, n := range cutStepNames(r.ceremonies()) {
		if m := summarise(r.step(n)).P50; m > most {
			name, most = n, m
		}
	}
	return name, most, float64(most) / float64(summarise(r.windows()).P50)
}

// half is one ceremony: load on from, the ceremony, the client's move.
func (e *cutEnv) half(ctx context.Context, cfg cutConfig, verb string, from, to testkit.Side, warm time.Duration, w *cutWriter) (cutSample, error) {
	cpuBefore, daemonBefore, start := sampleCPU(e.clusters[:]...), procCPU(e.daemon.pid()), time.Now()
	load, err := e.startLoad(from)
	if err != nil {
		return cutSample{}, err
	}
	defer load.stop()
	if verb == "rollback" {
		// The daemon starts the reverse stream when it next reads the
		// phase (once a second); a rollback before that would time the
		// stream's start-up backlog, not its lag under load.
		if err := e.waitReverse(ctx); err != nil {
			return cutSample{}, err
		}
	}
	// The load reaches its pace and the stream its steady lag first.
	time.Sleep(warm)
	if err := load.running(); err != nil {
		return cutSample{}, err
	}
	if err := e.daemon.alive(); err != nil {
		return cutSample{}, err
	}
	refused := w.refused[0].Load() + w.refused[1].Load()
	c, err := e.runCeremony(ctx, verb, e.cfgPath[cfg.verify], func() { w.point(to) })
	if err != nil {
		return cutSample{}, fmt.Errorf("%w\n--- tandem run ---\n%s", err, e.daemon.logTail())
	}
	g, err := w.awaitGap(to, 30*time.Second)
	if err != nil {
		return cutSample{}, err
	}
	tps, err := load.finish()
	if err != nil {
		return cutSample{}, err
	}
	// pgbench and the ceremony have been reaped, so they count as this
	// process's children; the daemon, still running, is read on its own.
	u := sampleCPU(e.clusters[:]...).since(cpuBefore)
	other := max(0, u.Other()-(procCPU(e.daemon.pid())-daemonBefore))
	noise := other.Seconds() / (time.Since(start).Seconds() * float64(runtime.NumCPU()))
	return cutSample{c: c, gap: g, refused: w.refused[0].Load() + w.refused[1].Load() - refused, tps: tps, noise: noise}, nil
}

// cutEnd is the check after the last rollback: the client's writes are on
// both sides, each once, and tandem verify finds the databases equal.
type cutEnd struct {
	commits    [2]int64
	rows       [2]int64
	verifyTook time.Duration
}

func (e *cutEnv) endCheck(ctx context.Context, w *cutWriter) (cutEnd, error) {
	end := cutEnd{commits: [2]int64{w.commits[0].Load(), w.commits[1].Load()}}
	// The forward stream carries the last writes on the old database over.
	deadline := time.Now().Add(time.Minute)
	for {
		var err error
		for _, s := range []testkit.Side{testkit.OldSide, testkit.NewSide} {
			if end.rows[s], err = e.clientRows(ctx, s); err != nil {
				return end, err
			}
		}
		if end.rows[0] == end.rows[1] {
			break
		}
		if time.Now().After(deadline) {
			return end, fmt.Errorf("the client's rows differ a minute after its last write: old %d, new %d", end.rows[0], end.rows[1])
		}
		time.Sleep(200 * time.Millisecond)
	}
	// A commit whose acknowledgement a fence cut off is there but was
	// counted as refused, so rows may exceed commits; fewer would be a
	// lost write.
	if total := end.commits[0] + end.commits[1]; end.rows[0] < total {
		return end, fmt.Errorf("the client had %d commits acknowledged, but only %d of its rows exist", total, end.rows[0])
	}
	start := time.Now()
	if out, err := e.tandem(ctx, "verify", "--config", e.cfgPath["none"]); err != nil {
		return end, fmt.Errorf("tandem verify after the last rollback: %w\n%s", err, out)
	}
	end.verifyTook = time.Since(start)
	return end, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func printCutSummary(out io.Writer, sz cutSizes, setup []cutStep, rows []*cutRow, skipped []string, end cutEnd, took time.Duration) {
	fmt.Fprintf(out, "\n==================== tandem cutover benchmark ====================\n")
	fmt.Fprintf(out, "pgbench -s %d (pgbench_history given a key: hid bigserial PRIMARY KEY); new schema: abalance renamed to balance.\n", sz.scale)
	fmt.Fprintf(out, "Load on the authoritative database: pgbench -n -c %d -j 2 -P 1 (TPC-B), plus a client writing once per %s that moves when the ceremony prints ready.\n",
		cutClients, cutWriteEvery)
	fmt.Fprintf(out, "%d cutovers and %d rollbacks per setting; sync is synchronous_commit of the application database on both clusters.\n", sz.cycles, sz.cycles)
	fmt.Fprintf(out, "tandem: fence to ready as printed by the ceremony. client gap: last commit acknowledged on one database to the first on the other.\n")
	fmt.Fprintf(out, "lag gate: how long the ceremony's lag-probe marker took to reach the other side just before the fence (the stream's lag then).\n\n")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "sync\tverify\tceremony\tn\tpgbench tps\tlag gate p50\ttandem p50\ttandem max\tclient gap p50\tclient gap max\trefused writes p50\tothers' CPU p50\tlargest step (p50, share of p50 window)\t")
	for _, r := range rows {
		win, gap := summarise(r.windows()), summarise(r.gaps())
		var refused, tps, noise []float64
		for _, s := range r.samples {
			refused = append(refused, float64(s.refused))
			tps = append(tps, s.tps)
			noise = append(noise, 100*s.noise)
		}
		name, d, share := r.dominant()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%.0f\t%s\t%s\t%s\t%s\t%s\t%.0f\t%.0f%%\t%s %s (%.0f%%)\t\n", r.cfg.sync, r.cfg.verify, r.verb, len(r.samples), median(tps),
			cutDur(summarise(r.lags()).P50), cutDur(win.P50), cutDur(win.Max), cutDur(gap.P50), cutDur(gap.Max), median(refused), median(noise), name, cutDur(d), 100*share)
	}
	tw.Flush()
	for _, r := range rows {
		if rate := r.checkRate(); rate > 0 {
			fmt.Fprintf(out, "final check of %s, %s: %.0f rows/s (p50), so a table of N rows adds about N / %.0f s to the window\n", r.cfg, r.verb, rate, rate)
		}
	}
	fmt.Fprintf(out, "\nSteps inside the window, p50 (max) over the samples; other = window minus its steps (the lifecycle row saved after each step):\n")
	for _, r := range rows {
		var parts []string
		for _, n := range append(cutStepNames(r.ceremonies()), "") {
			st := summarise(r.step(n))
			if n == "" {
				n = "other"
			}
			parts = append(parts, fmt.Sprintf("%s %s (%s)", n, cutDur(st.P50), cutDur(st.Max)))
		}
		fmt.Fprintf(out, "  %s %s: %s\n", r.cfg, r.verb, strings.Join(parts, "; "))
	}
	for _, s := range skipped {
		fmt.Fprintf(out, "  %s: skipped, the budget was spent (TANDEM_CUTOVER_BUDGET raises it)\n", s)
	}
	fmt.Fprintf(out, "After the last rollback: the client's %d commits on the old database and %d on the new are %d rows on each side; tandem verify: equal (%s).\n",
		end.commits[0], end.commits[1], end.rows[0], end.verifyTook.Round(100*time.Millisecond))
	fmt.Fprintf(out, "Whole benchmark: %s (setup: %s).\n", took.Round(time.Second), cutSteps(setup))
	fmt.Fprintf(out, "===================================================================\n")
}
