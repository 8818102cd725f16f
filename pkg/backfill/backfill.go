package backfill

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/dial"
)

// Metrics are the backfill's Prometheus series, registered once per
// process.
type Metrics struct {
	Rows      *prometheus.CounterVec
	Bytes     *prometheus.CounterVec
	Chunks    *prometheus.CounterVec
	Estimated *prometheus.GaugeVec
	Done      *prometheus.GaugeVec
	Throttled prometheus.Gauge
}

// NewMetrics registers the backfill metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Rows: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tandem_backfill_rows_total",
			Help: "Rows copied by the backfill (after dropping rows the stream changed meanwhile)."}, []string{"table"}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tandem_backfill_bytes_total",
			Help: "Bytes read from the source by the backfill."}, []string{"table"}),
		Chunks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tandem_backfill_chunks_total",
			Help: "Backfill chunks applied, by path: copy (straight into an empty key range) or upsert (staged), and by the format rows travelled in: binary or text."}, []string{"table", "path", "format"}),
		Estimated: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tandem_backfill_estimated_rows",
			Help: "Estimated rows of the source table (pg_class.reltuples)."}, []string{"table"}),
		Done: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tandem_backfill_done",
			Help: "1 once the table's backfill is complete."}, []string{"table"}),
		Throttled: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tandem_backfill_throttled",
			Help: "1 while the backfill is paused or throttled."}),
	}
	reg.MustRegister(m.Rows, m.Bytes, m.Chunks, m.Estimated, m.Done, m.Throttled)
	return m
}

// Runner reads chunks for every unfinished job. It never writes to the
// target: the applier does, at each chunk's high watermark.
type Runner struct {
	Name    string // migration name, carried in watermarks
	DSN     string
	Workers int
	Cfg     config.BackfillConfig
	Control *Control
	Tracker *Tracker
	Metrics *Metrics
	Log     *slog.Logger
	// Lag reports the stream's replication lag, for max_lag throttling.
	Lag func() time.Duration

	runID string
	seq   int64
	mu    sync.Mutex
}

// Watermark is the content of a watermark message.
type Watermark struct {
	Migration string `json:"migration"`
	Chunk     string `json:"chunk"`
	Mark      string `json:"mark"` // "high" ("low" from older versions is ignored)
}

// ParseWatermark decodes a watermark written by migration name; ok is false
// for other messages.
func ParseWatermark(prefix string, content []byte, name string) (Watermark, bool) {
	if prefix != MessagePrefix {
		return Watermark{}, false
	}
	var w Watermark
	if json.Unmarshal(content, &w) != nil || w.Migration != name {
		return Watermark{}, false
	}
	return w, true
}

func (r *Runner) nextID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.runID == "" {
		b := make([]byte, 6)
		_, _ = rand.Read(b)
		r.runID = hex.EncodeToString(b)
	}
	r.seq++
	return fmt.Sprintf("%s-%d", r.runID, r.seq)
}

// Run copies every unfinished job and returns once all chunks it read have
// been applied (or ctx ends).
func (r *Runner) Run(ctx context.Context, jobs []*Job) error {
	var todo []*Job
	var sources []string
	for _, j := range jobs {
		r.Tracker.SetKeys(j.Mapping.SourceName, j.keyIdx)
		r.Metrics.Estimated.WithLabelValues(j.Name()).Set(float64(max(j.Source.EstimatedRows, 0)))
		if j.Progress.Done {
			r.Metrics.Done.WithLabelValues(j.Name()).Set(1)
			continue
		}
		todo = append(todo, j)
		sources = append(sources, j.Mapping.SourceName)
	}
	// Even with nothing to copy: it stops the logging of every table.
	r.Tracker.watch(sources)
	if len(todo) == 0 {
		return nil
	}
	r.Log.Info("backfill starting", "tables", len(todo), "workers", r.Workers)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.probe(ctx) })
	slots := make(chan struct{}, r.Workers)
	queue := make(chan *Job, len(todo))
	for _, j := range todo {
		queue <- j
	}
	close(queue)
	var workers sync.WaitGroup
	for i := 0; i < min(r.Workers, len(todo)); i++ {
		workers.Add(1)
		g.Go(func() error {
			defer workers.Done()
			for j := range queue {
				if err := r.copyJob(ctx, j, slots); err != nil {
					return err
				}
			}
			return nil
		})
	}
	done := make(chan struct{})
	go func() { workers.Wait(); close(done) }()
	g.Go(func() error {
		// The probe runs until every worker is finished.
		select {
		case <-done:
			return errFinished
		case <-ctx.Done():
			return nil
		}
	})
	err := g.Wait()
	if err == errFinished {
		r.Log.Info("backfill complete")
		return nil
	}
	return err
}

var errFinished = fmt.Errorf("backfill finished")

// connect opens a backfill session on the old database: dial.Long for the
// chunk reads (bounded by chunk_rows and chunk_bytes, yet possibly long),
// dial.Short for the throttle probe.
func connect(ctx context.Context, dsn string, spec dial.Spec) (*pgconn.PgConn, error) {
	// Watermark commits must be synchronous whatever the old database's
	// default: the walsender sends only WAL that is flushed, so an async
	// commit reaches the stream only at the WAL writer's next round
	// (wal_writer_delay, 200ms by default), and each chunk would wait for
	// it (measured: 45k rows/s instead of 300k, and 161k-177k against
	// 584k-732k for plain COPY on a source running synchronous_commit
	// off). Any role may set it for its own session.
	conn, err := dial.OpenPg(ctx, dsn, spec.With("synchronous_commit", "on"))
	if err != nil {
		return nil, fmt.Errorf("backfill connection to source: %w", err)
	}
	return conn, nil
}

// copyJob pages through one table. Up to Workers chunks may be read and
// waiting for their high watermark at once (slots), which bounds memory.
func (r *Runner) copyJob(ctx context.Context, j *Job, slots chan struct{}) error {
	conn, err := connect(ctx, r.DSN, dial.Long(r.Name, "backfill"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	log := r.Log.With("table", j.Name())

	bound, err := queryKey(ctx, conn, j.boundQuery())
	if err != nil {
		return fmt.Errorf("backfill %s: upper bound: %w", j.Name(), err)
	}
	if err := r.logHeldCommits(ctx, conn, j); err != nil {
		return fmt.Errorf("backfill %s: %w", j.Name(), err)
	}
	// The guard of the first read takes its epoch from this (guardParam).
	if err := r.observe(ctx, conn); err != nil {
		return err
	}
	cursor := j.Progress.Cursor
	log.Info("copying", "from", cursor, "to", bound, "estimated_rows", j.Source.EstimatedRows, "format", j.Format())
	stopProgress := r.logProgress(ctx, j, log)
	defer stopProgress()
	// Only the release signals are kept: holding the chunks would keep
	// every row read reachable until the table is done.
	var pending []chan struct{}
	rowCap := 0
	// While this worker waits, its connection keeps the logs pruned.
	prune := func() error { return r.prune(ctx, conn) }
	for {
		if err := r.Control.waitClear(ctx, r.Cfg.ThrottleCheckInterval, prune); err != nil {
			return err
		}
		if err := takeSlot(ctx, slots, r.Cfg.ThrottleCheckInterval, prune); err != nil {
			return err
		}
		limit := r.Control.Limits().ChunkRows
		if rowCap > 0 {
			limit = min(limit, rowCap)
		}
		c, err := r.readChunk(ctx, conn, j, cursor, bound, limit)
		if err != nil {
			<-slots
			return err
		}
		// Rows wide enough to fill a chunk's bytes before its row count
		// would otherwise be read by the old database and thrown away by
		// every chunk: ask for as many as fitted, and grow back while
		// they fit.
		switch {
		case c.full:
			rowCap = max(c.rowCount, 1)
		case rowCap > 0 && c.rowCount == limit:
			rowCap *= 2
		}
		go func() {
			// The slot frees when the applier has written the chunk.
			select {
			case <-c.released:
			case <-ctx.Done():
			}
			<-slots
		}()
		pending = append(pending, c.released)
		if err := r.Control.spend(ctx, c.rowCount, c.Bytes); err != nil {
			return err
		}
		if c.Final {
			r.Tracker.unwatch(j.Mapping.SourceName)
			break
		}
		cursor = c.Cursor
	}
	// Done once the applier has written every chunk (the last one marks
	// the table done in the same transaction).
	for _, released := range pending {
		select {
		case <-released:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	stopProgress()
	r.Metrics.Done.WithLabelValues(j.Name()).Set(1)
	log.Info("table copied")
	return nil
}

func (r *Runner) emit(ctx context.Context, conn *pgconn.PgConn, chunk, mark string) error {
	content, _ := json.Marshal(Watermark{Migration: r.Name, Chunk: chunk, Mark: mark})
	_, err := conn.ExecParams(ctx, `SELECT pg_logical_emit_message(true, $1, $2)`,
		[][]byte{[]byte(MessagePrefix), content}, nil, nil, nil).Close()
	if err != nil {
		return fmt.Errorf("write %s watermark on source: %w", mark, err)
	}
	return nil
}

// takeSlot waits for a free slot, calling idle every interval meanwhile.
func takeSlot(ctx context.Context, slots chan struct{}, interval time.Duration, idle func() error) error {
	if interval <= 0 {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case slots <- struct{}{}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if err := idle(); err != nil {
				return err
			}
		}
	}
}

// readChunk runs the steps for one chunk (see the package comment):
// registration, a short keyset read checked against the transactions
// processed before the registration, high watermark. The rows are handed
// to the tracker before the high watermark exists, so the applier always
// finds them.
func (r *Runner) readChunk(ctx context.Context, conn *pgconn.PgConn, j *Job, cursor, bound []string, limit int) (*Chunk, error) {
	id := r.nextID()
	c := &Chunk{ID: id, Job: j, Source: j.Mapping.SourceName}
	r.Tracker.register(c)
	fail := func(err error) (*Chunk, error) {
		r.Tracker.forget(id)
		return nil, fmt.Errorf("backfill %s: %w", j.Name(), err)
	}
	maxBytes := r.Control.Limits().ChunkBytes
	var params [][]byte
	for _, v := range cursor {
		params = append(params, []byte(v))
	}
	for _, v := range bound {
		params = append(params, []byte(v))
	}
	var read chunkRows
	if bound != nil { // an empty table has no bound and nothing to read
		query := j.keyedQuery(cursor != nil, true, limit)
		for {
			guard := guardParam(c.unseen, r.Tracker.reference())
			got, err := readRows(ctx, conn, j, query, append(params, guard), maxBytes)
			if err != nil {
				return fail(fmt.Errorf("read chunk: %w", err))
			}
			r.Tracker.observe(got.snap)
			if unseen := c.unseenBy(got.snap); len(unseen) > 0 {
				// The read may hold rows older than changes already
				// applied. Once a snapshot shows those transactions, any
				// later one does, so the next read passes.
				r.Log.Debug("chunk read before transactions the stream applied were visible; reading it again once they are",
					"table", j.Name(), "xids", unseen, "rows_held_back", got.guarded)
				if err := r.awaitVisible(ctx, conn, c); err != nil {
					return fail(err)
				}
				continue
			}
			if got.guarded {
				// The guard held the rows back though the snapshot shows
				// every transaction: its xids took a wrong epoch (see
				// guardParam). Nothing is left to guard against.
				continue
			}
			read = got.rows
			break
		}
	}
	rows := read.rows
	final := len(rows) < limit && !read.full
	next := cursor
	if len(rows) > 0 {
		last := rows[len(rows)-1]
		next = make([]string, len(j.rowKeyIdx))
		for i, k := range j.rowKeyIdx {
			next[i] = string(last[k])
		}
	}
	r.Tracker.setRows(id, &read, next, final)
	if err := r.emit(ctx, conn, id, "high"); err != nil {
		return fail(err)
	}
	r.Metrics.Bytes.WithLabelValues(j.Name()).Add(float64(read.bytes))
	// The rows belong to the tracker (and then the applier) alone.
	return &Chunk{ID: id, Job: j, Final: final, Cursor: next, Bytes: read.bytes, rowCount: len(rows), full: read.full, released: c.released}, nil
}

// guardSQL is a condition that holds only in a snapshot that shows every
// transaction in the xid8 array parameter $n. Evaluated once per read, it
// keeps a read that would be thrown away (see readChunk) from fetching
// its rows; it decides nothing about correctness, which rests on the
// check of the snapshot the read returns.
func guardSQL(n int) string {
	return fmt.Sprintf("NOT EXISTS (SELECT FROM unnest($%d::xid8[]) x WHERE NOT pg_visible_in_snapshot(x, pg_current_snapshot()))", n)
}

// guardParam renders unseen as the guard's xid8 array, their epoch taken
// from ref, the xmax of a recent snapshot (none yet: an empty array). A
// reference so old that an xid comes out in the wrong epoch makes the
// guard hold rows back needlessly or let stale ones through, both of
// which readChunk handles.
func guardParam(unseen []uint32, ref uint64) []byte {
	b := []byte{'{'}
	if ref != 0 {
		for i, x := range unseen {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendUint(b, widen(x, ref), 10)
		}
	}
	return append(b, '}')
}

// chunkRead is what readRows returns: the rows, the snapshot they were
// read in, and whether the guard held them back.
type chunkRead struct {
	rows    chunkRows
	snap    Snapshot
	guarded bool
}

// readRows reads a chunk in a repeatable-read transaction, with the
// snapshot it reads in, in one round trip. The guard parameter is last in
// params.
func readRows(ctx context.Context, conn *pgconn.PgConn, j *Job, query string, params [][]byte, maxBytes int64) (chunkRead, error) {
	var b pgconn.Batch
	b.ExecParams("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", nil, nil, nil, nil)
	b.ExecParams(snapshotQuery+", "+guardSQL(1), params[len(params)-1:], nil, nil, nil)
	b.ExecParams(query, params, nil, nil, j.resultFormats())
	b.ExecParams("COMMIT", nil, nil, nil, nil)
	mrr := conn.ExecBatch(ctx, &b)
	var read chunkRead
	var snapText, passed string
	for i := 0; mrr.NextResult(); i++ {
		rr := mrr.ResultReader()
		switch i {
		case 1:
			for rr.NextRow() {
				snapText, passed = string(rr.Values()[0]), string(rr.Values()[1])
			}
		case 2:
			for rr.NextRow() {
				read.rows.add(j, rr.Values())
				if read.rows.bytes >= maxBytes {
					// Close discards the rest as it arrives.
					read.rows.full = true
					break
				}
			}
		}
		if _, err := rr.Close(); err != nil {
			_ = mrr.Close()
			return chunkRead{}, err
		}
	}
	if err := mrr.Close(); err != nil {
		return chunkRead{}, err
	}
	snap, err := ParseSnapshot(snapText)
	if err != nil {
		return chunkRead{}, err
	}
	read.snap, read.guarded = snap, passed != "t"
	return read, nil
}

const snapshotQuery = `SELECT pg_current_snapshot()::text`

func currentSnapshot(ctx context.Context, conn *pgconn.PgConn) (Snapshot, error) {
	v, err := queryKey(ctx, conn, snapshotQuery)
	if err != nil {
		return Snapshot{}, fmt.Errorf("read snapshot: %w", err)
	}
	if len(v) != 1 {
		return Snapshot{}, fmt.Errorf("read snapshot: %d values", len(v))
	}
	return ParseSnapshot(v[0])
}

// prune lets a fresh snapshot shrink the logs, when they hold anything.
func (r *Runner) prune(ctx context.Context, conn *pgconn.PgConn) error {
	if r.Tracker.logged() == 0 {
		return nil
	}
	return r.observe(ctx, conn)
}

// observe shows the tracker a fresh snapshot.
func (r *Runner) observe(ctx context.Context, conn *pgconn.PgConn) error {
	snap, err := currentSnapshot(ctx, conn)
	if err != nil {
		return fmt.Errorf("backfill: %w", err)
	}
	r.Tracker.observe(snap)
	return nil
}

// awaitVisible polls snapshots until one shows every transaction in the
// chunk's unseen list. They have committed, so it is a matter of
// milliseconds, unless a synchronous standby holds their commits, in
// which case the old database's own sessions wait as long.
func (r *Runner) awaitVisible(ctx context.Context, conn *pgconn.PgConn, c *Chunk) error {
	start := time.Now()
	warned := start
	wait := time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		snap, err := currentSnapshot(ctx, conn)
		if err != nil {
			return err
		}
		r.Tracker.observe(snap)
		unseen := c.unseenBy(snap)
		if len(unseen) == 0 {
			return nil
		}
		if time.Since(warned) >= 10*time.Second {
			warned = time.Now()
			r.Log.Warn("a chunk waits for transactions the stream has applied to become visible on the old database (is a synchronous standby not answering?)",
				"table", c.Job.Name(), "xids", unseen, "waited", time.Since(start).Round(time.Second))
		}
		wait = min(2*wait, 100*time.Millisecond)
	}
}

// heldCommitsQuery lists the transactions whose commit waits for a
// synchronous standby: flushed, so possibly applied by an earlier attempt,
// yet still invisible. It sees other roles' sessions only with
// pg_read_all_stats (or as superuser).
const heldCommitsQuery = `SELECT backend_xid::text FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND backend_xid IS NOT NULL`

// logHeldCommits logs, for the job's table, the transactions whose
// commits a synchronous standby holds (see the package comment).
func (r *Runner) logHeldCommits(ctx context.Context, conn *pgconn.PgConn, j *Job) error {
	v, err := queryKey(ctx, conn, heldCommitsQuery)
	if err != nil {
		return fmt.Errorf("list commits waiting for a synchronous standby: %w", err)
	}
	xids := make([]uint32, 0, len(v))
	for _, s := range v {
		x, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return fmt.Errorf("list commits waiting for a synchronous standby: xid %q: %w", s, err)
		}
		xids = append(xids, uint32(x))
	}
	r.Tracker.addUnseen(j.Mapping.SourceName, xids)
	return nil
}

// chunkRows collects a chunk read: text rows, or for a binary job the
// COPY body and the text key columns.
type chunkRows struct {
	rows  [][][]byte
	body  []byte
	ends  []int
	bytes int64
	full  bool // stopped at the chunk's byte limit
}

func (r *chunkRows) add(j *Job, vals [][]byte) {
	if !j.binary {
		r.rows = append(r.rows, copyRow(vals))
		for _, v := range vals {
			r.bytes += int64(len(v))
		}
		return
	}
	n := len(j.Mapping.Source)
	r.body = binary.BigEndian.AppendUint16(r.body, uint16(n))
	for _, v := range vals[:n] {
		if v == nil {
			r.body = append(r.body, 0xff, 0xff, 0xff, 0xff)
			continue
		}
		r.body = binary.BigEndian.AppendUint32(r.body, uint32(len(v)))
		r.body = append(r.body, v...)
		r.bytes += int64(len(v))
	}
	r.ends = append(r.ends, len(r.body))
	r.rows = append(r.rows, copyRow(vals[n:]))
}

func queryKey(ctx context.Context, conn *pgconn.PgConn, sql string) ([]string, error) {
	rr := conn.ExecParams(ctx, sql, nil, nil, nil, nil)
	var out []string
	for rr.NextRow() {
		for _, v := range rr.Values() {
			out = append(out, string(v))
		}
	}
	_, err := rr.Close()
	return out, err
}

// probe samples the throttle signals: replication lag, active backends on
// the source, and the user's probe query.
func (r *Runner) probe(ctx context.Context) error {
	if r.Cfg.MaxLag == 0 && r.Cfg.MaxActiveBackends == 0 && r.Cfg.ThrottleQuery == "" {
		return nil
	}
	conn, err := connect(ctx, r.DSN, dial.Short(r.Name, "throttle"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	t := time.NewTicker(r.Cfg.ThrottleCheckInterval)
	defer t.Stop()
	for {
		reason := ""
		if r.Cfg.MaxLag > 0 && r.Lag != nil {
			if lag := r.Lag(); lag > r.Cfg.MaxLag {
				reason = fmt.Sprintf("replication lag %s > max_lag %s", lag.Round(time.Millisecond), r.Cfg.MaxLag)
			}
		}
		if reason == "" && r.Cfg.MaxActiveBackends > 0 {
			v, err := queryKey(ctx, conn, `SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND backend_type = 'client backend'`)
			if err != nil {
				return fmt.Errorf("throttle probe (active backends): %w", err)
			}
			var n int
			fmt.Sscan(v[0], &n)
			if n > r.Cfg.MaxActiveBackends {
				reason = fmt.Sprintf("%d active backends > max_active_backends %d", n, r.Cfg.MaxActiveBackends)
			}
		}
		if reason == "" && r.Cfg.ThrottleQuery != "" {
			v, err := queryKey(ctx, conn, r.Cfg.ThrottleQuery)
			if err != nil {
				return fmt.Errorf("backfill.throttle_query failed: %w", err)
			}
			if len(v) > 0 && v[0] != "" && v[0] != "f" && v[0] != "false" && v[0] != "0" {
				reason = "throttle_query returned " + v[0]
			}
		}
		r.Control.setThrottled(reason)
		if reason != "" || r.Control.Limits().Paused {
			r.Metrics.Throttled.Set(1)
		} else {
			r.Metrics.Throttled.Set(0)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// copyRow copies a row out of the connection's buffer with one allocation
// for all its values (NULL stays nil).
func copyRow(vals [][]byte) [][]byte {
	n := 0
	for _, v := range vals {
		n += len(v)
	}
	data := make([]byte, 0, n)
	row := make([][]byte, len(vals))
	for i, v := range vals {
		if v != nil {
			start := len(data)
			data = append(data, v...)
			row[i] = data[start:len(data):len(data)]
		}
	}
	return row
}
