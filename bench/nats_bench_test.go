package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/tandem-migrate/tandem/internal/natstest"
	"github.com/tandem-migrate/tandem/pkg/config"
)

// natsResults are BenchmarkNATS's phases, for the summary.
type natsResults struct {
	pgDrain, bothDrain *drainResult
	pgLag, bothLag     *lagResult
	streamOnly         *streamOnlyDrain
}

type streamOnlyDrain struct {
	tx, messages int64
	elapsed      time.Duration
	cpu          cpuUse
}

// BenchmarkNATS measures the JetStream sink against the PostgreSQL apply
// it runs beside, on one pair of throwaway clusters and an embedded NATS
// server, in one run:
//
//   - drain: the TPC-B backlog of BenchmarkStream drained by tandem into
//     the new database alone, then into the new database and the stream
//     (every change published, new shape, waited for before each commit),
//     then into the stream alone (no new database, old shape);
//   - lag: the probe lag of BenchmarkStream with and without the stream:
//     what the JetStream sink adds to the time a change takes to be
//     committed on the new database.
//
// Every phase with a new database checks afterwards that both sides hold
// the same rows, and the published counts are checked against the
// backlog. Run it as `make bench` or
// `go test -run '^$' -bench NATS -benchtime 1x ./bench/`; -short shrinks it.
func BenchmarkNATS(b *testing.B) {
	pgbench := findPgbench()
	if pgbench == "" {
		b.Skip("pgbench not found: install it (Debian/Ubuntu: apt-get install postgresql) or put it on PATH")
	}
	sz := sizesFor(testing.Short())
	env := setupStreamEnv(b, pgbench, sz)
	srv := natstest.Start(b)
	res := &natsResults{}

	b.Run("drain", func(b *testing.B) {
		b.Run("pg", func(b *testing.B) {
			reportDrain(b, once(b, &res.pgDrain, env.drainTandem), env)
		})
		b.Run("pg+nats", func(b *testing.B) {
			defer env.publishTo(srv.URL())()
			r := once(b, &res.bothDrain, env.drainTandem)
			reportDrain(b, r, env)
			if r.Changes > 0 {
				b.ReportMetric(float64(r.Changes)/r.Elapsed.Seconds(), "published/s")
			}
			if res.pgDrain != nil {
				b.ReportMetric(r.rate()/res.pgDrain.rate(), "with/without")
			}
		})
	})
	b.Run("lag", func(b *testing.B) {
		b.Run("pg", func(b *testing.B) {
			reportLag(b, once(b, &res.pgLag, env.lagTandem), env)
		})
		b.Run("pg+nats", func(b *testing.B) {
			defer env.publishTo(srv.URL())()
			env.probeOffset = 2_000_000
			defer func() { env.probeOffset = 0 }()
			reportLag(b, once(b, &res.bothLag, env.lagTandem), env)
		})
	})
	// Last: the new database does not follow, so the two sides differ
	// afterwards.
	b.Run("drain/nats-only", func(b *testing.B) {
		defer env.publishTo(srv.URL())()
		r := once(b, &res.streamOnly, func(b *testing.B) (*streamOnlyDrain, error) { return env.drainStreamOnly(b) })
		b.ReportMetric(float64(r.messages)/r.elapsed.Seconds(), "published/s")
	})
	res.print(os.Stdout, env)
}

// drainStreamOnly drains the backlog into the stream alone: target.dsn
// empty, the old shape, the slot confirmed behind the PubAcks. It ends
// when the stream has acknowledged a message for every change.
func (e *streamEnv) drainStreamOnly(b *testing.B) (_ *streamOnlyDrain, err error) {
	ctx := b.Context()
	cfg, err := e.tandemConfig("solo", pgbenchTables...)
	if err != nil {
		return nil, err
	}
	cfg.Target.DSN, cfg.NATS.Shape = "", "old"
	if err := cfg.Validate(); err != nil {
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
	bl, err := e.backlog(ctx, b, "stream-only")
	if err != nil {
		return nil, err
	}
	bl.stopWaits()
	want := bl.load.tx * changesPerTx
	before := sampleCPU(e.old, e.new)
	b.ResetTimer()
	start := time.Now()
	t = startInproc(cfg)
	deadline := start.Add(drainTimeout)
	for t.metric("tandem_nats_acks_total") < float64(want) {
		if err := t.alive(); err != nil {
			return nil, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("stream-only drain: %.0f of %d messages acknowledged after %s", t.metric("tandem_nats_acks_total"), want, drainTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	return &streamOnlyDrain{tx: bl.load.tx, messages: int64(t.metric("tandem_nats_acks_total")), elapsed: elapsed, cpu: sampleCPU(e.old, e.new).since(before)}, nil
}

// publishTo makes the tandem of the next phases publish to url too; the
// returned function stops that.
func (e *streamEnv) publishTo(url string) func() {
	e.natsURL = url
	return func() { e.natsURL = "" }
}

// primeSlot runs tandem until its slot exists, then stops it: the slot
// has to exist before a backlog is written, or the backlog would not be
// in it, and tandem creates it on start-up.
//
// The slot is active while it is being created too, and a stop then
// cancels the creation: it must be streaming (its holder a walsender).
func (e *streamEnv) primeSlot(ctx context.Context, cfg *config.Config) error {
	t := startInproc(cfg)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if err := t.alive(); err != nil {
			return err
		}
		var streaming bool
		if err := e.oldDB.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
			WHERE s.slot_name = $1)`, cfg.Source.Slot).Scan(&streaming); err != nil {
			_ = t.stop()
			return fmt.Errorf("look up slot %s: %w", cfg.Source.Slot, err)
		}
		if streaming {
			break
		}
		if time.Now().After(deadline) {
			_ = t.stop()
			return fmt.Errorf("slot %s not streaming within a minute", cfg.Source.Slot)
		}
	}
	if err := t.stop(); err != nil {
		return fmt.Errorf("stop tandem after creating its slot: %w", err)
	}
	return nil
}

func (r *natsResults) print(out io.Writer, e *streamEnv) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	defer w.Flush()
	fmt.Fprintln(w, "\n=== tandem with the JetStream sink (embedded nats-server, same machine) ===")
	drain := func(name string, d *drainResult) {
		if d == nil {
			return
		}
		fmt.Fprintf(w, "  %s\t%d tx, %d changes in %.2fs\t%.0f changes/s\ttandem CPU %.1fs, %.1f source tx per target commit\n",
			name, d.Tx, d.Changes, d.Elapsed.Seconds(), d.rate(), d.CPU.Self.Seconds(), d.SourceTx/max(1, d.TargetCommits))
	}
	fmt.Fprintln(w, "\nBacklog drain (TPC-B, 4 changes per transaction):")
	drain("new database only", r.pgDrain)
	drain("new database + stream", r.bothDrain)
	if s := r.streamOnly; s != nil {
		fmt.Fprintf(w, "  stream only (old shape)\t%d tx, %d messages in %.2fs\t%.0f messages/s\ttandem CPU %.1fs\n",
			s.tx, s.messages, s.elapsed.Seconds(), float64(s.messages)/s.elapsed.Seconds(), s.cpu.Self.Seconds())
	}
	if r.pgDrain != nil && r.bothDrain != nil {
		fmt.Fprintf(w, "  with the stream / without\t%.2fx\t\t\n", r.bothDrain.rate()/r.pgDrain.rate())
	}
	if r.pgLag != nil && r.bothLag != nil {
		fmt.Fprintf(w, "\nLag under pgbench -R %d for %s (old commit -> committed on the new database):\n", e.sizes.lagRate, e.sizes.lagDuration)
		fmt.Fprintf(w, "  \tp50\tp99\t\n")
		fmt.Fprintf(w, "  new database only\t%s\t%s\t\n", msCell(r.pgLag.Stats.P50), msCell(r.pgLag.Stats.P99))
		fmt.Fprintf(w, "  new database + stream\t%s\t%s\t\n", msCell(r.bothLag.Stats.P50), msCell(r.bothLag.Stats.P99))
		fmt.Fprintf(w, "  added by the stream\t%s\t%s\t\n", msCell(r.bothLag.Stats.P50-r.pgLag.Stats.P50), msCell(r.bothLag.Stats.P99-r.pgLag.Stats.P99))
	}
}

func msCell(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}
