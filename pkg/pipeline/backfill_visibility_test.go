package pipeline_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tandem-migrate/tandem/internal/testkit"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/pipeline"
)

// TestBackfillCommitNotYetVisible pins the race a chunk read loses to a
// commit that the stream has already delivered but the old database does
// not show yet. PostgreSQL flushes a commit record (from then on the
// walsender sends it) before it takes the transaction out of the process
// array (from then on snapshots see it); a synchronous standby that has
// not answered holds a commit in between for as long as it likes, which
// is how this test widens the window from microseconds to seconds:
// synchronous_standby_names names a standby that never connects.
//
// Each held transaction is applied by the stream while the backfill is
// paused, so its change is processed before any chunk is registered; then
// the backfill resumes and reads the chunk while the transaction is still
// invisible. A chunk that trusted that read would put back the deleted
// row or the old image of the updated one. After a restart the new run
// never saw those transactions in its stream, yet they are still
// invisible: it must find them on the old database.
func TestBackfillCommitNotYetVisible(t *testing.T) {
	for _, tc := range []struct {
		name    string
		restart bool // between applying the held transactions and the copy
	}{
		{"same run", false},
		{"after a restart", true},
	} {
		t.Run(tc.name, func(t *testing.T) { testCommitNotYetVisible(t, tc.restart) })
	}
}

func testCommitNotYetVisible(t *testing.T, restart bool) {
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	for _, c := range []*pgx.Conn{src, tgt} {
		if _, err := c.Exec(ctx, `CREATE TABLE plain (id bigint PRIMARY KEY, v text)`); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := src.Exec(ctx, `INSERT INTO plain SELECT g, 'v' || g FROM generate_series(1, 500) g`); err != nil {
		t.Fatal(err)
	}
	cfg := env.Config("visibility")
	cfg.Tables = []config.TableConfig{{Source: "public.plain", Target: "public.plain"}, {Source: "public.marker", Target: "public.marker"}}
	on := true
	cfg.Backfill.Enabled = &on
	cfg.Backfill.ChunkRows = 10000 // one chunk holds every row
	cfg.Backfill.Workers = 2       // both tables' chunks in flight at once
	reread := newLogWatch("reading it again")
	r, reg := startPaused(t, cfg, reread)
	testkit.WaitSlot(t, src, cfg.Source.Slot, time.Minute)
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, time.Minute, r.alive)

	// Every kind of change, each in its own transaction held at its commit.
	tests := []struct {
		op, sql string
		id      int64
	}{
		{"delete", `DELETE FROM plain WHERE id = $1`, 42},
		{"update", `UPDATE plain SET v = 'changed' WHERE id = $1`, 77},
		{"insert", `INSERT INTO plain VALUES ($1, 'new')`, 100000},
	}
	holdCommits(t, src)
	var held []int32
	deleted := int64(0)
	for _, tt := range tests {
		pid, id := holdCommit(t, env.SourceDSN, src, tt.sql, tt.id)
		held = append(held, pid)
		if tt.op == "delete" {
			deleted = id
		}
	}
	for _, tt := range tests {
		waitApplied(t, reg, "public.plain", tt.op, r.alive)
	}
	if restart {
		r.stop(t)
		r, _ = startPaused(t, cfg, reread)
		// Nothing commits on the old database while commits are held, so
		// no marker: the slot is active once the new run streams.
		testkit.WaitSlot(t, src, cfg.Source.Slot, time.Minute)
	}
	var gone bool
	if err := src.QueryRow(ctx, `SELECT NOT EXISTS (SELECT FROM plain WHERE id = $1)`, deleted).Scan(&gone); err != nil || gone {
		t.Fatalf("the held delete of %d is visible (%v, err %v): the test no longer holds commits", deleted, gone, err)
	}

	r.p.Backfill.SetPaused(false)
	// A chunk of plain that read without looking at visibility now waits
	// in SyncRep with its high watermark, beside marker's; a correct one
	// has seen its snapshot miss the held transactions and waits for them.
	waitChunkRead(t, src, held, 2, reread.hit, 10*time.Second)
	releaseCommits(t, src)

	testkit.WaitBackfill(t, tgt, cfg.Name, 2, time.Minute, r.alive)
	if err := testkit.Mark(ctx, src, 2); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 2, time.Minute, r.alive)
	testkit.SameTable(t, src, tgt, "plain", "id")
	select {
	case <-reread.hit:
	default:
		t.Fatal("no chunk read found its snapshot missing a held transaction: the test no longer exercises the race")
	}
}

// startPaused runs the pipeline with its backfill paused, so no chunk is
// registered before the test resumes it, and returns the registry its
// metrics are in. Its log goes through watch.
func startPaused(t *testing.T, cfg *config.Config, watch *logWatch) (*running, *prometheus.Registry) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1), p: pipeline.New(cfg, slog.New(watch.wrap(logger().Handler())), reg)}
	r.p.Backfill.SetPaused(true)
	go func() { r.done <- r.p.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r, reg
}

// holdCommits makes every synchronous commit on the old database wait for
// a standby that never comes, until releaseCommits; the test's cleanup
// releases them too, so a failure does not leave the cluster stuck.
func holdCommits(t *testing.T, src *pgx.Conn) {
	t.Helper()
	if _, err := src.Exec(context.Background(), `ALTER SYSTEM SET synchronous_standby_names = 'tandem_test_nobody'`); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Exec(context.Background(), `SELECT pg_reload_conf()`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { releaseCommits(t, src) })
}

func releaseCommits(t *testing.T, src *pgx.Conn) {
	t.Helper()
	if _, err := src.Exec(context.Background(), `ALTER SYSTEM RESET synchronous_standby_names`); err != nil {
		t.Error(err)
	}
	if _, err := src.Exec(context.Background(), `SELECT pg_reload_conf()`); err != nil {
		t.Error(err)
	}
}

// holdCommit runs sql with id in a session of its own and returns that
// session's backend pid and the id used once its commit waits for the
// standby. The setting
// reaches the checkpointer, which decides whether commits wait, a moment
// after the reload, so a statement that commits straight away is retried
// (with the next id) until one is held.
func holdCommit(t *testing.T, dsn string, src *pgx.Conn, sql string, id int64) (int32, int64) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); id++ {
		if pid, ok := tryHold(t, dsn, src, sql, id); ok {
			return pid, id
		}
	}
	t.Fatalf("no commit was held within 20s")
	return 0, 0
}

func tryHold(t *testing.T, dsn string, src *pgx.Conn, sql string, id int64) (int32, bool) {
	t.Helper()
	ctx := context.Background()
	conn := testkit.Connect(t, dsn)
	var pid int32
	if err := conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, sql, id)
		done <- err
	}()
	for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(10 * time.Millisecond) {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s (id %d): %v", sql, id, err)
			}
			return 0, false
		default:
		}
		var event string
		if err := src.QueryRow(ctx, `SELECT coalesce(wait_event, '') FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&event); err != nil {
			t.Fatal(err)
		}
		if event == "SyncRep" {
			t.Logf("%s with id %d: commit flushed, held invisible (pid %d)", sql, id, pid)
			return pid, true
		}
	}
	t.Fatalf("%s (id %d) neither committed nor waited for the standby within 5s", sql, id)
	return 0, false
}

// waitApplied waits until the stream has processed a change of op to
// table, read from the pipeline's metrics.
func waitApplied(t *testing.T, reg *prometheus.Registry, table, op string, alive func() error) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if err := alive(); err != nil {
			t.Fatal(err)
		}
		if counterValue(t, reg, "tandem_changes_applied_total", map[string]string{"table": table, "op": op}) > 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the stream did not apply the held %s within a minute", op)
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if hasLabels(m, labels) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, l := range m.GetLabel() {
		if v, ok := want[l.GetName()]; ok {
			if v != l.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

// waitChunkRead waits up to d until the chunks have been read: want
// sessions other than the held ones wait for the standby (high watermarks
// being committed), or reread closes (a chunk found its read stale).
func waitChunkRead(t *testing.T, src *pgx.Conn, held []int32, want int, reread <-chan struct{}, d time.Duration) {
	t.Helper()
	n := 0
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case <-reread:
			t.Logf("a chunk read found its snapshot missing a held transaction")
			return
		default:
		}
		err := src.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND pid <> ALL ($1)`, held).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n >= want {
			break
		}
	}
	t.Logf("%d high watermark(s) written while the held transactions were invisible", n)
}

// logWatch closes hit at the first log record (of any level) whose
// message contains match.
type logWatch struct {
	match string
	hit   chan struct{}
	once  sync.Once
}

func newLogWatch(match string) *logWatch {
	return &logWatch{match: match, hit: make(chan struct{})}
}

func (w *logWatch) wrap(h slog.Handler) slog.Handler { return watchHandler{h, w} }

type watchHandler struct {
	next slog.Handler
	w    *logWatch
}

func (h watchHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h watchHandler) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.w.match) {
		h.w.once.Do(func() { close(h.w.hit) })
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h watchHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return watchHandler{h.next.WithAttrs(as), h.w}
}

func (h watchHandler) WithGroup(name string) slog.Handler {
	return watchHandler{h.next.WithGroup(name), h.w}
}
