// Package testkit holds what the integration tests share: a realistic
// schema pair (old shape, new shape), a random workload on the old one, and
// an independent SQL comparison of the two. The comparison's expected rows
// come from SQL written here, not from tandem's transform, so a bug in the
// transform cannot hide itself.
package testkit

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
	"github.com/tandem-migrate/tandem/pkg/config"
)

// SourceSchema is the old database.
const SourceSchema = `
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE orders (
	id          bigint PRIMARY KEY,
	tenant_id   integer NOT NULL,
	customer_id bigint,
	status_code integer,
	total       numeric(14,4),
	note        text,
	big         text,
	preferences jsonb,
	doc         json,
	tags        text[],
	nums        integer[],
	blob        bytea,
	uid         uuid,
	created     timestamptz,
	local_ts    timestamp,
	day         date,
	at_time     time,
	dur         interval,
	m           mood,
	qty         posint,
	ratio       float8,
	code        char(10),
	flags       bit(4),
	label       varchar(20),
	legacy_flag boolean
);
ALTER TABLE orders ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE events (
	id        bigint PRIMARY KEY,
	tenant_id integer NOT NULL,
	kind      text NOT NULL,
	body      text
);
ALTER TABLE events REPLICA IDENTITY FULL;
CREATE TABLE marker (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
`

// TargetSchema is the new database: renamed columns, an enum instead of an
// int code, a dropped column, a filtered table, a column only the new schema
// has, and a stricter unique constraint.
const TargetSchema = `
CREATE TYPE order_status AS ENUM ('open', 'paid', 'unknown');
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE orders_v2 (
	id           bigint PRIMARY KEY,
	tenant_id    integer NOT NULL,
	customer_ref bigint,
	status       order_status NOT NULL,
	total        numeric(14,4),
	note         text,
	big          text,
	preferences  jsonb NOT NULL,
	doc          json,
	tags         text[],
	nums         integer[],
	blob         bytea,
	uid          uuid,
	created      timestamptz,
	local_ts     timestamp,
	day          date,
	at_time      time,
	dur          interval,
	m            mood,
	qty          posint,
	ratio        float8,
	code         char(10),
	flags        bit(4),
	label        varchar(20),
	migrated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE events_v2 (
	id        bigint PRIMARY KEY,
	tenant_id integer NOT NULL,
	kind      text NOT NULL,
	body      text
);
CREATE TABLE marker (id bigint PRIMARY KEY, at timestamptz NOT NULL);
`

// Tables is the mapping under test.
func Tables() []config.TableConfig {
	return []config.TableConfig{
		{
			Source: "public.orders", Target: "public.orders_v2",
			Columns: map[string]string{
				"status":       "CASE status_code WHEN 1 THEN 'open' WHEN 2 THEN 'paid' ELSE 'unknown' END",
				"customer_ref": "customer_id",
				"preferences":  "COALESCE(preferences, '{}'::jsonb)",
			},
			Drop: []string{"legacy_flag"},
		},
		{Source: "public.events", Target: "public.events_v2", Filter: "tenant_id <> 0"},
		{Source: "public.marker", Target: "public.marker"},
	}
}

// Comparisons pairs a query on the old database that computes the expected
// new rows with a query on the new database that reads them, in the same
// order and text form.
var Comparisons = []struct{ Name, Source, Target string }{
	{
		Name: "orders",
		Source: `SELECT id, tenant_id, customer_id, CASE status_code WHEN 1 THEN 'open' WHEN 2 THEN 'paid' ELSE 'unknown' END,
			total, note, md5(big), length(big), COALESCE(preferences, '{}'::jsonb), doc::text, tags, nums, blob, uid, created, local_ts,
			day, at_time, dur, m::text, qty, ratio, code, flags, label FROM orders ORDER BY id`,
		Target: `SELECT id, tenant_id, customer_ref, status::text, total, note, md5(big), length(big), preferences, doc::text,
			tags, nums, blob, uid, created, local_ts, day, at_time, dur, m::text, qty, ratio, code, flags, label FROM orders_v2 ORDER BY id`,
	},
	{
		Name:   "events",
		Source: `SELECT id, tenant_id, kind, body FROM events WHERE tenant_id <> 0 ORDER BY id`,
		Target: `SELECT id, tenant_id, kind, body FROM events_v2 ORDER BY id`,
	},
	{
		Name:   "marker",
		Source: `SELECT id FROM marker ORDER BY id`,
		Target: `SELECT id FROM marker ORDER BY id`,
	},
}

// Env is a source and a target cluster with the schemas loaded.
type Env struct {
	Source, Target *pgcluster.Cluster
	SourceDSN      string
	TargetDSN      string
}

// Setup starts two clusters and loads the schemas.
func Setup(t testing.TB) *Env {
	t.Helper()
	return SetupWith(t, nil, nil)
}

// SetupWith is Setup with extra postgresql.conf settings for the old and
// the new database, for servers configured the way production ones are.
func SetupWith(t testing.TB, oldSettings, newSettings map[string]string) *Env {
	t.Helper()
	ctx := context.Background()
	src := pgcluster.ForTest(t, pgcluster.Options{Name: "old", Settings: oldSettings})
	tgt := pgcluster.ForTest(t, pgcluster.Options{Name: "new", Settings: newSettings})
	e := &Env{Source: src, Target: tgt, SourceDSN: src.DSN("postgres"), TargetDSN: tgt.DSN("postgres")}
	if err := src.Exec(ctx, "postgres", SourceSchema); err != nil {
		t.Fatalf("source schema: %v", err)
	}
	if err := tgt.Exec(ctx, "postgres", TargetSchema); err != nil {
		t.Fatalf("target schema: %v", err)
	}
	return e
}

// Config returns a config for the environment.
func (e *Env) Config(slot string) *config.Config {
	cfg := &config.Config{
		Source: config.SourceConfig{DSN: e.SourceDSN, Slot: slot, Publication: slot},
		Target: config.TargetConfig{DSN: e.TargetDSN},
		Tables: Tables(),
	}
	f := false
	cfg.Backfill.Enabled = &f
	cfg.Apply.RetryMin = 100 * time.Millisecond
	cfg.Apply.RetryMax = time.Second
	cfg.ApplyDefaults()
	return cfg
}

// YAML renders a stream-only config as a file for the binary.
func (e *Env) YAML(slot string, extra string) string {
	return e.YAMLWithBackfill(slot, "{enabled: false}", extra)
}

// YAMLWithBackfill renders the config with the given backfill section
// (a YAML flow mapping).
func (e *Env) YAMLWithBackfill(slot, backfill, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "source: {dsn: %q, slot: %s, publication: %s}\n", e.SourceDSN, slot, slot)
	fmt.Fprintf(&b, "target: {dsn: %q}\n", e.TargetDSN)
	// The mapping's CASE folds several codes into 'unknown': it cannot be
	// inverted, so this migration is one-way.
	fmt.Fprintf(&b, "backfill: %s\napply: {retry_min: 100ms, retry_max: 1s}\nreverse: {enabled: false}\n", backfill)
	b.WriteString(extra)
	b.WriteString(`tables:
  - source: public.orders
    target: public.orders_v2
    columns:
      status: "CASE status_code WHEN 1 THEN 'open' WHEN 2 THEN 'paid' ELSE 'unknown' END"
      customer_ref: customer_id
      preferences: "COALESCE(preferences, '{}'::jsonb)"
    drop: [legacy_flag]
  - source: public.events
    target: public.events_v2
    filter: "tenant_id <> 0"
  - source: public.marker
    target: public.marker
`)
	return b.String()
}

// Connect opens a session with settings that make text forms comparable.
func Connect(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, "SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres'"); err != nil {
		t.Fatalf("session settings: %v", err)
	}
	return conn
}

// Compare streams both sides of every comparison and fails on the first
// few differing rows. It holds one row per side in memory.
func Compare(t testing.TB, src, tgt *pgx.Conn) {
	t.Helper()
	for _, c := range Comparisons {
		if diffs := compareOne(t, src, tgt, c.Source, c.Target); len(diffs) > 0 {
			t.Errorf("%s differs:\n%s", c.Name, strings.Join(diffs, "\n"))
		}
	}
}

// Equal reports whether every comparison matches, without failing.
func Equal(t testing.TB, src, tgt *pgx.Conn) bool {
	for _, c := range Comparisons {
		if len(compareOne(t, src, tgt, c.Source, c.Target)) > 0 {
			return false
		}
	}
	return true
}

func rowText(rows pgx.Rows) (string, error) {
	vals := rows.RawValues()
	parts := make([]string, len(vals))
	for i, v := range vals {
		if v == nil {
			parts[i] = "<NULL>"
		} else {
			parts[i] = string(v)
		}
	}
	return strings.Join(parts, "|"), nil
}

func compareOne(t testing.TB, src, tgt *pgx.Conn, srcSQL, tgtSQL string) []string {
	t.Helper()
	ctx := context.Background()
	// Text results so both sides render values the same way.
	sr, err := src.Query(ctx, srcSQL, pgx.QueryResultFormats{pgx.TextFormatCode})
	if err != nil {
		t.Fatalf("source query: %v", err)
	}
	defer sr.Close()
	tr, err := tgt.Query(ctx, tgtSQL, pgx.QueryResultFormats{pgx.TextFormatCode})
	if err != nil {
		t.Fatalf("target query: %v", err)
	}
	defer tr.Close()
	var diffs []string
	n := 0
	for {
		sOK, tOK := sr.Next(), tr.Next()
		if !sOK && !tOK {
			break
		}
		n++
		var s, g string
		if sOK {
			s, _ = rowText(sr)
		}
		if tOK {
			g, _ = rowText(tr)
		}
		if s != g && len(diffs) < 5 {
			diffs = append(diffs, fmt.Sprintf("  row %d\n    want %.300s\n    got  %.300s", n, s, g))
		}
		if !sOK || !tOK {
			// One side ended; count the rest as differences.
			if !sOK {
				diffs = append(diffs, "  target has extra rows")
			} else {
				diffs = append(diffs, "  target is missing rows")
			}
			break
		}
	}
	if err := sr.Err(); err != nil {
		t.Fatalf("source rows: %v", err)
	}
	if err := tr.Err(); err != nil {
		t.Fatalf("target rows: %v", err)
	}
	return diffs
}

// Workload writes random changes to the old database.
type Workload struct {
	Conn   *pgx.Conn
	Rand   *rand.Rand
	NextID int64
	Big    string
}

// NewWorkload seeds a workload.
func NewWorkload(conn *pgx.Conn, seed int64) *Workload {
	return &Workload{Conn: conn, Rand: rand.New(rand.NewSource(seed)), NextID: 1, Big: strings.Repeat("large value that lives in TOAST ", 1000)}
}

const insertOrder = `INSERT INTO orders (id, tenant_id, customer_id, status_code, total, note, big, preferences, doc, tags, nums, blob, uid,
	created, local_ts, day, at_time, dur, m, qty, ratio, legacy_flag, code, flags, label)
VALUES ($1, $2, $3, $4, $5::numeric, $6, $7, $8::jsonb, $9::json, $10::text[], $11::int[], $12::bytea, $13::uuid,
	$14::timestamptz, $15::timestamp, $16::date, $17::time, $18::interval, $19::mood, $20, $21, $22, $23, $24::bit(4), $25)`

// orderArgs makes one row of every type, with NULLs, empty strings, odd
// numerics and non-UTC offsets mixed in.
func (w *Workload) orderArgs(id int64) []any {
	r := w.Rand
	pick := func(vals ...any) any { return vals[r.Intn(len(vals))] }
	var big any
	if r.Intn(3) == 0 {
		big = fmt.Sprintf("%d %s", id, w.Big)
	}
	return []any{
		id, r.Intn(5), pick(nil, int64(r.Intn(100000))), pick(nil, 1, 2, 3),
		pick(nil, "0", "1.5000", "-12345.6789", fmt.Sprintf("%d.%04d", r.Intn(1e6), r.Intn(1e4))),
		pick(nil, "", "plain", "quote ' and \" and \\ backslash", "ünïcødé ✓", "tab\tnew\nline"),
		big,
		pick(nil, `{"b": 1, "a": [1, 2, {"z": null}]}`, `{}`, `{"nested": {"k": "v", "n": 1.50}}`),
		pick(nil, `{"b": 1,   "a": 2}`, `[1, 2]`),
		pick(nil, `{}`, `{a,"b c",NULL,""}`, `{"x,y"}`),
		pick(nil, `{1,2,3}`, `{}`),
		pick(nil, `\x`, `\x00ff10`, `\xdeadbeef`),
		pick(nil, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000000"),
		pick(nil, "2024-02-29 23:59:59.123456+05:30", "1999-12-31 00:00:00-08", "infinity"),
		pick(nil, "2024-01-01 12:00:00.5", "-infinity"),
		pick(nil, "2024-02-29", "0001-01-01 BC"),
		pick(nil, "00:00:00", "23:59:59.999999"),
		pick(nil, "1 year 2 mons 3 days 04:05:06.7", "-1 day", "00:00:00"),
		pick(nil, "sad", "ok", "happy"),
		pick(nil, 1, 42),
		pick(nil, 0.1, 1e300, -2.5, 3.141592653589793),
		pick(nil, true, false),
		pick(nil, "abcdefghij", "ab", ""),
		pick(nil, "1010", "0001"),
		pick(nil, "twenty chars exactly", "short", ""),
	}
}

// Step runs one random transaction; some roll back.
func (w *Workload) Step(ctx context.Context) error {
	r := w.Rand
	tx, err := w.Conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	n := 1 + r.Intn(6)
	for i := 0; i < n; i++ {
		if err := w.op(ctx, tx); err != nil {
			return err
		}
	}
	if r.Intn(10) == 0 {
		return tx.Rollback(ctx)
	}
	return tx.Commit(ctx)
}

func (w *Workload) randomID() int64 {
	if w.NextID <= 1 {
		return 1
	}
	return 1 + w.Rand.Int63n(w.NextID)
}

func (w *Workload) op(ctx context.Context, tx pgx.Tx) error {
	r := w.Rand
	var err error
	switch k := r.Intn(100); {
	case k < 35:
		_, err = tx.Exec(ctx, insertOrder, w.orderArgs(w.NextID)...)
		w.NextID++
	case k < 50:
		// Leaves big untouched: it must keep its value on the target.
		_, err = tx.Exec(ctx, `UPDATE orders SET status_code = $2, total = total + 1, note = $3 WHERE id = $1`, w.randomID(), r.Intn(4), fmt.Sprint("n", r.Intn(100)))
	case k < 55:
		_, err = tx.Exec(ctx, `UPDATE orders SET big = $2 WHERE id = $1`, w.randomID(), fmt.Sprintf("rewritten %d %s", r.Int(), w.Big))
	case k < 60:
		_, err = tx.Exec(ctx, `UPDATE orders SET preferences = preferences || '{"touched": true}', tags = array_append(tags, 'x') WHERE id = $1`, w.randomID())
	case k < 63:
		// Primary key change: the old key must disappear on the target.
		_, err = tx.Exec(ctx, `UPDATE orders SET id = $2 WHERE id = $1`, w.randomID(), w.NextID)
		w.NextID++
	case k < 72:
		_, err = tx.Exec(ctx, `DELETE FROM orders WHERE id = $1`, w.randomID())
	case k < 82:
		_, err = tx.Exec(ctx, `INSERT INTO events (id, tenant_id, kind, body) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id`,
			r.Int63n(2000), r.Intn(3), fmt.Sprint("k", r.Intn(5)), strings.Repeat("b", r.Intn(50)))
	case k < 92:
		// Moves rows into and out of the filter.
		_, err = tx.Exec(ctx, `UPDATE events SET tenant_id = $2, body = body || 'u' WHERE id = $1`, r.Int63n(2000), r.Intn(3))
	case k < 99:
		_, err = tx.Exec(ctx, `DELETE FROM events WHERE id = $1`, r.Int63n(2000))
	default:
		_, err = tx.Exec(ctx, `TRUNCATE events`)
	}
	return err
}

// BigTransaction inserts n orders in one transaction, with generate_series
// so the test process stays small too.
func (w *Workload) BigTransaction(ctx context.Context, n int) error {
	start := w.NextID
	w.NextID += int64(n)
	_, err := w.Conn.Exec(ctx, `INSERT INTO orders (id, tenant_id, customer_id, status_code, total, note, preferences, tags, created)
		SELECT g, g % 7, g * 3, g % 4, g / 7.0, 'bulk ' || g, jsonb_build_object('g', g), ARRAY['t' || g], '2024-01-01'::timestamptz + g * interval '1 second'
		FROM generate_series($1::bigint, $2::bigint) g`, start, start+int64(n)-1)
	return err
}

// Mark writes a sentinel row; once it is on the target, everything
// committed before it is too (commit order).
func Mark(ctx context.Context, conn *pgx.Conn, id int64) error {
	_, err := conn.Exec(ctx, `INSERT INTO marker (id) VALUES ($1)`, id)
	return err
}

// WaitMark waits until the sentinel reaches the target. alive, when not
// nil, is polled so a stopped daemon fails the wait at once.
func WaitMark(t testing.TB, tgt *pgx.Conn, id int64, timeout time.Duration, alive ...func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, a := range alive {
			if err := a(); err != nil {
				t.Fatalf("waiting for marker %d: %v", id, err)
			}
		}
		var ok bool
		err := tgt.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM marker WHERE id = $1)`, id).Scan(&ok)
		if err == nil && ok {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("marker %d did not reach the target within %s", id, timeout)
}

// WaitSlot waits until the replication slot exists and is streaming, so a
// stream-only test does not write before tandem can see it.
func WaitSlot(t testing.TB, src *pgx.Conn, slot string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var active bool
		// confirmed_flush_lsn is NULL while the slot is still being built.
		err := src.QueryRow(context.Background(), `SELECT active AND confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active)
		if err == nil && active {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("slot %s not streaming within %s", slot, timeout)
}

// Seed inserts n orders and some events before tandem starts, with
// generate_series so the test process stays small. TOASTed values are
// included so chunk copies carry them.
func Seed(ctx context.Context, conn *pgx.Conn, w *Workload, n int) error {
	start := w.NextID
	w.NextID += int64(n)
	_, err := conn.Exec(ctx, `INSERT INTO orders (id, tenant_id, customer_id, status_code, total, note, big, preferences, tags, nums, blob, uid, created, dur, m, qty, ratio, legacy_flag, code, flags, label)
		SELECT g, g % 5, g * 3, g % 4, g / 7.0, CASE WHEN g % 11 = 0 THEN '' WHEN g % 13 = 0 THEN NULL ELSE 'seed ' || g END,
			CASE WHEN g % 997 = 0 THEN repeat('toast ' || g, 2000) END,
			CASE WHEN g % 3 = 0 THEN NULL ELSE jsonb_build_object('g', g, 'n', jsonb_build_object('x', g % 10)) END,
			ARRAY['t' || g, NULL], ARRAY[g::int % 100], decode(lpad(to_hex(g), 8, '0'), 'hex'), md5(g::text)::uuid,
			'2024-01-01 00:00:00+02'::timestamptz + g * interval '1 minute', make_interval(secs => g),
			(ARRAY['sad','ok','happy']::mood[])[1 + g % 3], 1 + g % 50, g / 3.0, g % 2 = 0,
			'c' || (g % 1000000000), (g % 16)::bit(4), 'label ' || g
		FROM generate_series($1::bigint, $2::bigint) g`, start, start+int64(n)-1)
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, `INSERT INTO events (id, tenant_id, kind, body) SELECT g, g % 3, 'seed', repeat('e', g % 40) FROM generate_series(0, 1999) g ON CONFLICT DO NOTHING`)
	return err
}

// WaitBackfill waits until every mapping's backfill is done on the target.
func WaitBackfill(t testing.TB, tgt *pgx.Conn, name string, tables int, timeout time.Duration, alive ...func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, a := range alive {
			if err := a(); err != nil {
				t.Fatalf("waiting for backfill: %v", err)
			}
		}
		var done int
		err := tgt.QueryRow(context.Background(), `SELECT count(*) FROM tandem.backfill WHERE name = $1 AND done`, name).Scan(&done)
		if err == nil && done == tables {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("backfill %s not done within %s", name, timeout)
}

// Churn changes random seeded orders (ids 1..rows) until stop closes:
// deletes, delete-then-reinsert of the same key, updates that leave the
// TOASTed column alone, and ordinary workload steps. It is what a backfill
// must survive: every kind of change landing on rows the copy has not
// reached, is reading, or has passed.
func (w *Workload) Churn(ctx context.Context, conn *pgx.Conn, seed int64, rows int, pause time.Duration, stop <-chan struct{}) error {
	return churn(seed, pause, stop, func(r *rand.Rand) (err error) {
		id := 1 + r.Int63n(int64(rows))
		switch r.Intn(5) {
		case 0:
			_, err = conn.Exec(ctx, `DELETE FROM orders WHERE id = $1`, id)
		case 1:
			if _, err = conn.Exec(ctx, `DELETE FROM orders WHERE id = $1`, id); err == nil {
				_, err = conn.Exec(ctx, `INSERT INTO orders (id, tenant_id, note) VALUES ($1, 9, 'reborn') ON CONFLICT (id) DO NOTHING`, id)
			}
		case 2:
			_, err = conn.Exec(ctx, `UPDATE orders SET note = 'updated', status_code = 2 WHERE id = $1`, id)
		case 3:
			_, err = conn.Exec(ctx, `UPDATE orders SET big = repeat('new toast ', 1000) WHERE id = $1`, id)
		default:
			err = w.Step(ctx)
		}
		return err
	})
}

// churn runs step with a seeded random source, pausing between steps,
// until stop closes or a step fails.
func churn(seed int64, pause time.Duration, stop <-chan struct{}, step func(*rand.Rand) error) error {
	r := rand.New(rand.NewSource(seed))
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		if err := step(r); err != nil && !ConcurrencyAbort(err) {
			return err
		}
		if pause > 0 {
			time.Sleep(pause)
		}
	}
}

// ConcurrencyAbort reports a transaction the old database aborted whole
// because it collided with another writer (deadlock, serialization): an
// application retries or moves on, and so does the workload; nothing of it
// was committed, so nothing of it is owed to the new database.
func ConcurrencyAbort(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40P01" || pgErr.Code == "40001")
}

// BackfillCopied is the durable count of rows the backfill has committed
// for a source table (0 before tandem created its schema).
func BackfillCopied(ctx context.Context, tgt *pgx.Conn, table string) int64 {
	var n int64
	_ = tgt.QueryRow(ctx, `SELECT COALESCE(sum(rows_copied), 0)::int8 FROM tandem.backfill WHERE source = $1`, table).Scan(&n)
	return n
}

// SameTable compares one table on both sides by an independent query: its
// row count and a digest of every row's text in key order. On a
// difference it reports both counts and the first differing rows.
func SameTable(t testing.TB, src, tgt *pgx.Conn, table, orderBy string) {
	t.Helper()
	ident := pgx.Identifier{table}.Sanitize()
	q := fmt.Sprintf(`SELECT count(*), coalesce(md5(string_agg(r::text, '|' ORDER BY %s)), '') FROM %s r`, orderBy, ident)
	var wantN, gotN int64
	var want, got string
	if err := src.QueryRow(context.Background(), q).Scan(&wantN, &want); err != nil {
		t.Fatalf("read %s on the source: %v", table, err)
	}
	if err := tgt.QueryRow(context.Background(), q).Scan(&gotN, &got); err != nil {
		t.Fatalf("read %s on the target: %v", table, err)
	}
	if wantN == gotN && want == got {
		return
	}
	// Only now read the rows themselves, to name the first differences.
	rows := fmt.Sprintf(`SELECT r::text FROM %s r ORDER BY %s`, ident, orderBy)
	t.Fatalf("%s differs: %d rows on the source, %d on the target; first differences in %s order:\n%s",
		table, wantN, gotN, orderBy, strings.Join(compareOne(t, src, tgt, rows, rows), "\n"))
}

// ChurnByKey runs random statements from ops, each taking a key in
// [1, maxID] as $1, until stop is closed; it returns the first error.
func ChurnByKey(ctx context.Context, conn *pgx.Conn, seed, maxID int64, ops []string, pause time.Duration, stop <-chan struct{}) error {
	return churn(seed, pause, stop, func(r *rand.Rand) error {
		_, err := conn.Exec(ctx, ops[r.Intn(len(ops))], 1+r.Int63n(maxID))
		return err
	})
}
