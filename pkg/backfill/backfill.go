package backfill

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
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
	for _, j := range jobs {
		r.Tracker.SetKeys(j.Mapping.SourceName, j.keyIdx)
		r.Metrics.Estimated.WithLabelValues(j.Name()).Set(float64(max(j.Source.EstimatedRows, 0)))
		if j.Progress.Done {
			r.Metrics.Done.WithLabelValues(j.Name()).Set(1)
			continue
		}
		todo = append(todo, j)
	}
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
	cursor := j.Progress.Cursor
	log.Info("copying", "from", cursor, "to", bound, "estimated_rows", j.Source.EstimatedRows, "format", j.Format())
	stopProgress := r.logProgress(ctx, j, log)
	defer stopProgress()
	// Only the release signals are kept: holding the chunks would keep
	// every row read reachable until the table is done.
	var pending []chan struct{}
	rowCap := 0
	for {
		if err := r.Control.waitClear(ctx, r.Cfg.ThrottleCheckInterval); err != nil {
			return err
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
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

// readChunk runs the steps for one chunk (see the package comment):
// registration, a short keyset read, high watermark. The rows are handed
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
		rr := conn.ExecParams(ctx, j.keyedQuery(cursor != nil, true, limit), params, nil, nil, j.resultFormats())
		for rr.NextRow() {
			read.add(j, rr.Values())
			if read.bytes >= maxBytes {
				// Close discards the rest as it arrives.
				read.full = true
				break
			}
		}
		if _, err := rr.Close(); err != nil {
			return fail(fmt.Errorf("read chunk: %w", err))
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
