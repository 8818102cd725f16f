package main

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/internal/testkit"
	"github.com/tandem-migrate/tandem/pkg/change"
)

// TestFaultOldDatabaseCrash crashes the old database (SIGKILL of the
// postmaster and its children, as pg_ctl -m immediate or a power cut
// would: no checkpoint) several times while tandem streams a random
// workload, and starts it again. The slot must survive crash recovery, and
// the same `tandem run` process must reconnect by itself and resume from
// its checkpoint, never creating a new slot. Whatever the old database
// still has after recovery (a crash may take unacknowledged transactions
// with it) must end on the new one: every row equal by an independent
// comparison, every ledger row applied exactly once.
func TestFaultOldDatabaseCrash(t *testing.T) {
	const slot = "oldcrash"
	ctx := context.Background()
	crashes := 4
	env := testkit.Setup(t)
	tgt := testkit.Connect(t, env.TargetDSN)
	installLedger(t, tgt)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", closedPort(t))
	cfg := writeConfig(t, env.YAML(slot, fmt.Sprintf("metrics: {listen: %q}\n", metricsAddr)))

	d := startDaemon(t, cfg)
	created := withTarget(t, env.SourceDSN, func(c *pgx.Conn) change.LSN { return waitStreaming(t, c, slot) })
	w := startCrashWriter(t, env.SourceDSN, 51)

	r := rand.New(rand.NewSource(52))
	for i := 1; i <= crashes; i++ {
		time.Sleep(time.Duration(1500+r.Intn(2000)) * time.Millisecond)
		if err := d.alive(); err != nil {
			t.Fatal(err)
		}
		steps := w.steps.Load()
		if err := env.Source.Kill(); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		noticed := waitMetric(t, d, metricsAddr, "tandem_streaming", func(v float64) bool { return v == 0 }, 30*time.Second)
		time.Sleep(500 * time.Millisecond)
		if err := env.Source.StartAgain(ctx); err != nil {
			t.Fatal(err)
		}
		up := time.Now()
		back := waitMetric(t, d, metricsAddr, "tandem_streaming", func(v float64) bool { return v == 1 }, 2*time.Minute)
		t.Logf("crash #%d of the old database after %d writer steps: noticed after %s; up again after %s; streaming %s after that",
			i, steps, noticed.Sub(killed).Round(100*time.Millisecond), up.Sub(killed).Round(100*time.Millisecond), back.Sub(up).Round(100*time.Millisecond))
		withTarget(t, env.SourceDSN, func(src *pgx.Conn) bool {
			var slots, mine int64
			if err := src.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE slot_name = $1 AND wal_status <> 'lost') FROM pg_replication_slots`, slot).Scan(&slots, &mine); err != nil {
				t.Fatal(err)
			}
			if slots != 1 || mine != 1 {
				t.Fatalf("after crash #%d: %d replication slot(s), %d of them %s and usable; want the one slot, survived", i, slots, mine, slot)
			}
			assertNeverConfirmedAhead(t, src, tgt, slot, created)
			return true
		})
		// Let the workload go on past the restart before the next crash.
		for w.steps.Load() < steps+50 {
			if err := w.err(); err != nil {
				t.Fatal(err)
			}
			if err := d.alive(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if err := w.finish(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	src := testkit.Connect(t, env.SourceDSN)
	// The ledger rows the old database has after its crashes: a crash may
	// have cut the acknowledgement of a commit that is durable, or taken
	// one that was never acknowledged.
	ledger := queryInt(t, src, `SELECT count(*) FROM marker WHERE id >= $1`, ledgerBase)
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, 3*time.Minute, d.alive)
	testkit.Compare(t, src, tgt)
	assertLedgerExactlyOnce(t, tgt, ledger)
	t.Logf("%d crashes; %d writer steps, %d ledger rows on the old database (%d attempted), %d writer reconnects",
		crashes, w.steps.Load(), ledger, w.attempted.Load(), w.reconnects.Load())
	if n := strings.Count(d.log(), "created replication slot"); n != 1 {
		t.Errorf("the log says %d times that the slot was created, want once", n)
	}
	if code, _ := d.terminate(30 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// crashWriter is the workload with ledger rows (as startWriter's), but it
// rides out a crash of the old database: on an error it reconnects and
// goes on with the next ledger id, since it cannot know whether a commit
// whose answer was lost is durable. The ledger's truth is therefore what
// the old database holds afterwards.
type crashWriter struct {
	stop       chan struct{}
	done       chan error
	steps      atomic.Int64
	attempted  atomic.Int64
	reconnects atomic.Int64
}

func startCrashWriter(t *testing.T, dsn string, seed int64) *crashWriter {
	t.Helper()
	w := &crashWriter{stop: make(chan struct{}), done: make(chan error, 1)}
	ctx := context.Background()
	connect := func() (*pgx.Conn, error) {
		deadline := time.Now().Add(2 * time.Minute)
		for {
			c, err := pgx.Connect(ctx, dsn)
			if err == nil {
				return c, nil
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("reconnect to the old database: %w", err)
			}
			select {
			case <-w.stop:
				return nil, nil
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	conn, err := connect()
	if err != nil {
		t.Fatal(err)
	}
	wl := testkit.NewWorkload(conn, seed)
	go func() {
		w.done <- func() error {
			defer func() { wl.Conn.Close(context.Background()) }()
			for id := int64(ledgerBase); ; id++ {
				select {
				case <-w.stop:
					return nil
				default:
				}
				err := wl.Step(ctx)
				if err == nil {
					w.steps.Add(1)
					w.attempted.Add(1)
					_, err = wl.Conn.Exec(ctx, `INSERT INTO marker (id) VALUES ($1)`, id)
				}
				if err != nil {
					if !wl.Conn.IsClosed() && wl.Conn.Ping(ctx) == nil {
						return fmt.Errorf("workload step %d failed with the old database up: %w", w.steps.Load(), err)
					}
					wl.Conn.Close(ctx)
					c, cerr := connect()
					if cerr != nil || c == nil {
						return cerr
					}
					wl.Conn = c
					w.reconnects.Add(1)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}()
	t.Cleanup(func() { w.finish() })
	return w
}

// err is the writer's error if it has stopped, nil while it runs.
func (w *crashWriter) err() error {
	select {
	case err := <-w.done:
		w.done <- err
		if err == nil {
			return fmt.Errorf("writer stopped")
		}
		return err
	default:
		return nil
	}
}

func (w *crashWriter) finish() error {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	err := <-w.done
	w.done <- err
	return err
}
