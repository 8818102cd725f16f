package verify

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/internal/testkit"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

// The round-trip tests run on two clusters of their own whose server
// defaults differ from each other and from what text COPY needs (time zone,
// date and interval styles, float digits, bytea output): values only come
// back equal if RoundTrip fixes the sessions itself.
func roundTripEnv(t *testing.T) *testkit.Env {
	t.Helper()
	return testkit.SetupWith(t, map[string]string{
		"timezone": "America/New_York", "datestyle": "SQL, DMY", "extra_float_digits": "0", "bytea_output": "escape",
	}, map[string]string{
		"timezone": "Asia/Kolkata", "datestyle": "German, DMY", "intervalstyle": "sql_standard", "extra_float_digits": "-2",
	})
}

// rtDB creates a database on each cluster with the given schemas.
func rtDB(t *testing.T, e *testkit.Env, oldSchema, newSchema string) (oldDB, newDB string) {
	t.Helper()
	ctx := context.Background()
	oldDB, newDB = fmt.Sprintf("rt_old_%d", dbSeq.Add(1)), fmt.Sprintf("rt_new_%d", dbSeq.Add(1))
	for _, s := range []struct {
		c interface {
			CreateDB(context.Context, string) error
			Exec(context.Context, string, string, ...any) error
		}
		db, schema string
	}{{e.Source, oldDB, oldSchema}, {e.Target, newDB, newSchema}} {
		if err := s.c.CreateDB(ctx, s.db); err != nil {
			t.Fatal(err)
		}
		if err := s.c.Exec(ctx, s.db, s.schema); err != nil {
			t.Fatalf("schema of %s: %v", s.db, err)
		}
	}
	return oldDB, newDB
}

// rtConns opens the old database as verify does (read-only by default) and
// the new one with the server's odd defaults left as they are.
func rtConns(t *testing.T, e *testkit.Env, oldDB, newDB string) (old, new *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	old, err := Connect(ctx, e.Source.DSN(oldDB))
	if err != nil {
		t.Fatal(err)
	}
	new, err = pgx.Connect(ctx, e.Target.DSN(newDB))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { old.Close(ctx); new.Close(ctx) })
	return old, new
}

// mappings compiles the forward entry (old -> new) and the reverse one (new
// -> old) as the stream would, type-checked on the database each writes
// to. The reverse drops every new column, so only its explicit columns
// (and any old column left out) are carried back.
func mappings(t testing.TB, old, new *pgx.Conn, fwdTC, revTC config.TableConfig) (fwd, rev *transform.Mapping) {
	t.Helper()
	ctx := context.Background()
	compile := func(tc config.TableConfig, src, tgt *pgx.Conn, dropAll bool) *transform.Mapping {
		st, tt, err := transform.LoadTables(ctx, "tables[0]", tc, src, tgt)
		if err != nil {
			t.Fatal(err)
		}
		if dropAll {
			for _, c := range st.Columns {
				if !c.Generated {
					tc.Drop = append(tc.Drop, c.Name)
				}
			}
		}
		m, err := transform.Plan(ctx, "tables[0]", tc, transform.SourceFromCatalog(st), st.ReplicaIdentity, tt, tgt)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Check(ctx, tgt, "tables[0]"); err != nil {
			t.Fatal(err)
		}
		return m
	}
	return compile(fwdTC, old, new, false), compile(revTC, new, old, true)
}

// rtWant is what a case expects; a negative count is not checked.
type rtWant struct {
	rows, skipped, lossy, dropped int64
	columns                       map[string]int64
	// examples must all be among the report's lines, and every line must
	// match pattern.
	examples   []string
	pattern    string
	notCarried []string
	unwritten  []string
	// sampled bounds the rows a sampled run reads, and asks for at least
	// minRanges ranges.
	sampled   int64
	minRanges int64
}

const accountsOld = `
CREATE TABLE public.accounts (
	id          bigint PRIMARY KEY,
	full_name   text NOT NULL,
	status_code int NOT NULL,
	legacy      text
);
INSERT INTO public.accounts SELECT g, 'user ' || g, %s, 'old ' || g FROM generate_series(1, %d) g;
ANALYZE public.accounts;`

const accountsNew = `
CREATE TYPE public.account_status AS ENUM ('active', 'suspended', 'closed');
CREATE TABLE public.accounts_v2 (
	id     bigint PRIMARY KEY,
	name   text NOT NULL,
	status public.account_status NOT NULL,
	since  timestamptz NOT NULL DEFAULT now()
);`

var (
	accountsFwd = config.TableConfig{Source: "public.accounts", Target: "public.accounts_v2", Columns: map[string]string{
		"name":   "full_name",
		"status": "CASE status_code WHEN 1 THEN 'active' WHEN 2 THEN 'suspended' ELSE 'closed' END",
	}}
	accountsRev = config.TableConfig{Source: "public.accounts_v2", Target: "public.accounts", Columns: map[string]string{
		"id":          "id",
		"full_name":   "name",
		"status_code": "CASE status WHEN 'active' THEN 1 WHEN 'suspended' THEN 2 ELSE 3 END",
	}}
)

type rtCase struct {
	name                 string
	oldSchema, newSchema string
	fwd, rev             config.TableConfig
	opt                  RoundTripOptions
	want                 rtWant
}

var rtCases = []rtCase{
	{
		name:      "rename and an int code to an enum, with its exact inverse",
		oldSchema: fmt.Sprintf(accountsOld, "1 + g % 3", 1000), newSchema: accountsNew,
		fwd: accountsFwd, rev: accountsRev, opt: RoundTripOptions{RangeRows: 300},
		want: rtWant{rows: 1000, columns: map[string]int64{}, notCarried: []string{"legacy"}},
	},
	{
		name:      "a CASE mapping two codes to one label is lossy",
		oldSchema: fmt.Sprintf(accountsOld, "1 + g % 4", 20), newSchema: accountsNew,
		fwd: accountsFwd, rev: accountsRev,
		want: rtWant{rows: 20, lossy: 5, columns: map[string]int64{"status_code": 5}, notCarried: []string{"legacy"},
			examples: []string{"id=3 status_code: 4 -> 3", "id=7 status_code: 4 -> 3", "id=11 status_code: 4 -> 3",
				"id=15 status_code: 4 -> 3", "id=19 status_code: 4 -> 3"}},
	},
	{
		name: "NULLs: nullable columns as they are, an empty string that comes back NULL",
		oldSchema: `CREATE TABLE t (id int PRIMARY KEY, a text, note text, n int);
			INSERT INTO t VALUES (1, NULL, NULL, NULL), (2, 'x', '', 0), (3, NULL, 'n', NULL), (4, '', 'm', 4);`,
		newSchema: `CREATE TABLE t2 (id int PRIMARY KEY, a text, note text NOT NULL, n int, extra text); ALTER TABLE t2 REPLICA IDENTITY FULL;`,
		fwd:       config.TableConfig{Source: "t", Target: "t2", Columns: map[string]string{"note": "COALESCE(note, '')"}},
		rev: config.TableConfig{Source: "t2", Target: "t", Columns: map[string]string{
			"id": "id", "a": "a", "note": "NULLIF(note, '')", "n": "COALESCE(n, extra::int)"}},
		want: rtWant{rows: 4, lossy: 1, columns: map[string]int64{"note": 1}, unwritten: []string{"extra"},
			examples: []string{"id=2 note: '' -> NULL"}},
	},
	{
		name: "composite key, renamed, walked in ranges that split a tenant; case lost on some rows",
		oldSchema: `CREATE TABLE o (tenant int, no int, label text NOT NULL, PRIMARY KEY (tenant, no));
			INSERT INTO o SELECT t, n, CASE WHEN n % 50 = 0 THEN 'Mixed ' || n ELSE 'lower ' || n END
			FROM generate_series(1, 3) t, generate_series(1, 400) n;`,
		newSchema: `CREATE TABLE o2 (tenant_id int, order_no int, label text NOT NULL, PRIMARY KEY (tenant_id, order_no));`,
		fwd: config.TableConfig{Source: "o", Target: "o2", Columns: map[string]string{
			"tenant_id": "tenant", "order_no": "no", "label": "upper(label)"}},
		rev: config.TableConfig{Source: "o2", Target: "o", Columns: map[string]string{
			"tenant": "tenant_id", "no": "order_no", "label": "lower(label)"}},
		opt: RoundTripOptions{RangeRows: 170, MaxExamples: 2},
		want: rtWant{rows: 1200, lossy: 24, columns: map[string]int64{"label": 24},
			pattern: `^tenant=[123],no=[0-9]*[05]0 label: 'Mixed [0-9]+' -> 'mixed [0-9]+'$`},
	},
	{
		name: "a filtered forward mapping: rows it leaves out are not proved",
		oldSchema: `CREATE TABLE a (id bigint PRIMARY KEY, body text, deleted boolean NOT NULL);
			ALTER TABLE a REPLICA IDENTITY FULL;
			INSERT INTO a SELECT g, 'b' || g, g % 7 = 0 FROM generate_series(1, 700) g;`,
		newSchema: `CREATE TABLE a2 (id bigint PRIMARY KEY, body text);`,
		fwd:       config.TableConfig{Source: "a", Target: "a2", Filter: "NOT deleted"},
		rev:       config.TableConfig{Source: "a2", Target: "a", Columns: map[string]string{"id": "id", "body": "body", "deleted": "false"}},
		opt:       RoundTripOptions{RangeRows: 250},
		want:      rtWant{rows: 600, skipped: 100, columns: map[string]int64{}},
	},
	{
		name: "a reverse filter drops rows: they do not come back at all",
		oldSchema: `CREATE TABLE a (id bigint PRIMARY KEY, kind text NOT NULL);
			INSERT INTO a SELECT g, CASE WHEN g % 10 = 0 THEN 'internal' ELSE 'user' END FROM generate_series(1, 50) g;`,
		newSchema: `CREATE TABLE a2 (id bigint PRIMARY KEY, kind text NOT NULL); ALTER TABLE a2 REPLICA IDENTITY FULL;`,
		fwd:       config.TableConfig{Source: "a", Target: "a2"},
		rev:       config.TableConfig{Source: "a2", Target: "a", Filter: "kind <> 'internal'", Columns: map[string]string{"id": "id", "kind": "kind"}},
		want: rtWant{rows: 50, lossy: 5, dropped: 5, columns: map[string]int64{},
			examples: []string{"id=10: dropped by the reverse filter", "id=50: dropped by the reverse filter"}},
	},
	{
		// Only the last 30% of the keys hold lossy rows, so a sample finds
		// both kinds only if its ranges reach both ends.
		name:      "sampling reads a bounded number of rows, in ranges spread over the table",
		oldSchema: fmt.Sprintf(accountsOld, "CASE WHEN g > 35000 THEN 4 ELSE 1 + g % 3 END", 50000), newSchema: accountsNew,
		fwd: accountsFwd, rev: accountsRev, opt: RoundTripOptions{Sample: 2000, RangeRows: 5000},
		want: rtWant{rows: -1, lossy: -1, sampled: 2000, minRanges: 10, notCarried: []string{"legacy"},
			pattern: `^id=[0-9]+ status_code: 4 -> 3$`},
	},
	{
		name: "a mix of types: text, jsonb, json, arrays, numeric scale, time, bytea, floats, enum, domain, char",
		oldSchema: `CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
			CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
			CREATE TABLE m (
				id uuid PRIMARY KEY, body text, doc jsonb, attrs json, tags text[], nums int[], price numeric(12,2),
				at timestamptz, day date, dur interval, blob bytea, ratio float8, mood mood, qty posint, code char(6), flags bit(4));
			INSERT INTO m VALUES
				('00000000-0000-4000-8000-000000000001', E'tab\there\nnew line \\ back', '{"b": 1, "a": [1, 2.50, null]}', '{"a": 1}',
				 '{a,"b c",NULL,""}', '{1,NULL,3}', 12.34, '2024-02-29 23:59:59.123456+05:30', '0001-01-01 BC', '1 year 2 mons -3 days 04:05:06.7',
				 '\x00ff10', 0.1, 'happy', 7, 'ab', '1010'),
				('00000000-0000-4000-8000-000000000002', '', '{}', '{"b": 1,  "a": 2}', '{}', '{}', -0.05, 'infinity', '2024-02-29', '-1 day',
				 '\x', 1e300, 'sad', 1, 'abcdef', '0001'),
				('00000000-0000-4000-8000-000000000003', NULL, NULL, NULL, '{"x,y"}', NULL, 1.25, NULL, NULL, NULL, NULL, '-0', NULL, NULL, NULL, NULL);`,
		newSchema: `CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
			CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
			CREATE TABLE m2 (
				id uuid PRIMARY KEY, body text, doc jsonb, attrs jsonb, tags text, nums int[], price numeric(12,1),
				at timestamptz, day date, dur interval, blob bytea, ratio float8, mood mood, qty posint, code varchar(6), flags bit(4));`,
		fwd: config.TableConfig{Source: "m", Target: "m2", Columns: map[string]string{"tags": "array_to_string(tags, ',', '*')"}},
		rev: config.TableConfig{Source: "m2", Target: "m", Columns: map[string]string{
			"id": "id", "body": "body", "doc": "doc", "attrs": "attrs::json", "tags": "string_to_array(tags, ',', '*')", "nums": "nums",
			"price": "price", "at": "at", "day": "day", "dur": "dur", "blob": "blob", "ratio": "ratio", "mood": "mood", "qty": "qty",
			"code": "code", "flags": "flags"}},
		// json keeps its text, which jsonb does not; a comma inside an
		// element splits on the way back; the new price keeps one decimal.
		want: rtWant{rows: 3, lossy: 3, columns: map[string]int64{"attrs": 1, "tags": 1, "price": 3},
			examples: []string{
				`id=00000000-0000-4000-8000-000000000002 attrs: '{"b": 1,  "a": 2}' -> '{"a": 2, "b": 1}'`,
				`id=00000000-0000-4000-8000-000000000003 tags: '{"x,y"}' -> '{x,y}'`,
				`id=00000000-0000-4000-8000-000000000001 price: 12.34 -> 12.30`,
				`id=00000000-0000-4000-8000-000000000002 price: -0.05 -> -0.10`,
				`id=00000000-0000-4000-8000-000000000003 price: 1.25 -> 1.30`,
			}},
	},
}

func TestRoundTrip(t *testing.T) {
	e := roundTripEnv(t)
	for _, tc := range rtCases {
		t.Run(tc.name, func(t *testing.T) {
			oldDB, newDB := rtDB(t, e, tc.oldSchema, tc.newSchema)
			old, new := rtConns(t, e, oldDB, newDB)
			fwd, rev := mappings(t, old, new, tc.fwd, tc.rev)
			rep := runRoundTrip(t, old, new, fwd, rev, tc.opt)
			checkRoundTrip(t, rep, tc.opt, tc.want)
		})
	}
	t.Run("the shared test schema, with a workload's odd values", func(t *testing.T) {
		testOrders(t, e)
	})
	t.Run("a mapping that fails on a row stops with an error and leaves nothing", func(t *testing.T) {
		testFailures(t, e)
	})
}

func runRoundTrip(t *testing.T, old, new *pgx.Conn, fwd, rev *transform.Mapping, opt RoundTripOptions) *RoundTripReport {
	t.Helper()
	opt.Log = testLogger(t)
	rep, err := RoundTrip(context.Background(), old, new, fwd, rev, opt)
	if err != nil {
		t.Fatal(err)
	}
	assertNoTemp(t, old, new)
	return rep
}

// testOrders proves an inverse of the shared test mapping (testkit.Tables)
// over a seeded table plus a random workload: every type it has, values
// with tabs, quotes, infinities and BC dates. The inverse maps 'unknown'
// back to NULL and keeps the COALESCEd preferences, so rows with status
// code 0 or 3 and rows without preferences do not come back; how many is
// counted apart, in SQL on the old database.
func testOrders(t *testing.T, e *testkit.Env) {
	ctx := context.Background()
	rw := testkit.Connect(t, e.SourceDSN)
	w := testkit.NewWorkload(rw, 7)
	if err := testkit.Seed(ctx, rw, w, 3000); err != nil {
		t.Fatal(err)
	}
	for range 300 {
		if err := w.Step(ctx); err != nil && !testkit.ConcurrencyAbort(err) {
			t.Fatal(err)
		}
	}
	cols := map[string]string{"customer_id": "customer_ref", "status_code": "CASE status WHEN 'open' THEN 1 WHEN 'paid' THEN 2 END"}
	for _, c := range []string{"id", "tenant_id", "total", "note", "big", "preferences", "doc", "tags", "nums", "blob", "uid", "created",
		"local_ts", "day", "at_time", "dur", "m", "qty", "ratio", "code", "flags", "label"} {
		cols[c] = pgx.Identifier{c}.Sanitize()
	}
	old, new := rtConns(t, e, "postgres", "postgres")
	fwd, rev := mappings(t, old, new, testkit.Tables()[0], config.TableConfig{Source: "public.orders_v2", Target: "public.orders", Columns: cols})
	var want rtWant
	var status, prefs int64
	err := rw.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE status_code NOT IN (1, 2) OR preferences IS NULL),
		count(*) FILTER (WHERE status_code NOT IN (1, 2)), count(*) FILTER (WHERE preferences IS NULL) FROM orders`).Scan(&want.rows, &want.lossy, &status, &prefs)
	if err != nil {
		t.Fatal(err)
	}
	if status == 0 || prefs == 0 || want.lossy == want.rows {
		t.Fatalf("the workload made no rows to tell apart: %d rows, %d with another status, %d without preferences", want.rows, status, prefs)
	}
	want.columns = map[string]int64{"status_code": status, "preferences": prefs}
	want.notCarried = []string{"legacy_flag"}
	opt := RoundTripOptions{RangeRows: 700}
	checkRoundTrip(t, runRoundTrip(t, old, new, fwd, rev, opt), opt, want)
}

// testFailures: an expression that fails for some rows, on either side,
// ends the proof with an error that says where, leaves no temp table and
// both connections usable.
func testFailures(t *testing.T, e *testkit.Env) {
	badFwd := accountsFwd
	badFwd.Columns = map[string]string{"name": "full_name", "status": "CASE status_code WHEN 1 THEN 'active' ELSE 'bogus' END"}
	badRev := accountsRev
	badRev.Columns = maps.Clone(accountsRev.Columns)
	badRev.Columns["status_code"] = "(CASE status WHEN 'active' THEN '1' ELSE 'x' END)::int"
	for _, tc := range []struct {
		name     string
		fwd, rev config.TableConfig
		want     string
	}{
		{"forward", badFwd, accountsRev, "evaluate the forward mapping on the new database"},
		{"reverse", accountsFwd, badRev, "evaluate the reverse mapping on the old database"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			oldDB, newDB := rtDB(t, e, fmt.Sprintf(accountsOld, "1 + g % 3", 100), accountsNew)
			old, new := rtConns(t, e, oldDB, newDB)
			fwd, rev := mappings(t, old, new, tc.fwd, tc.rev)
			_, err := RoundTrip(context.Background(), old, new, fwd, rev, RoundTripOptions{RangeRows: 40, Log: testLogger(t)})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "public.accounts") {
				t.Fatalf("error %v, want one naming the table and saying %q", err, tc.want)
			}
			t.Log(err)
			assertNoTemp(t, old, new)
		})
	}
}

// assertNoTemp checks both sessions are usable, outside any transaction,
// and hold no temp table.
func assertNoTemp(t *testing.T, conns ...*pgx.Conn) {
	t.Helper()
	for _, c := range conns {
		var n int
		if err := c.QueryRow(context.Background(), "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()").Scan(&n); err != nil {
			t.Fatalf("session unusable after the round trip: %v", err)
		}
		if n != 0 || c.PgConn().TxStatus() != 'I' {
			t.Errorf("%d temp tables left, transaction status %c", n, c.PgConn().TxStatus())
		}
	}
}

func checkRoundTrip(t *testing.T, rep *RoundTripReport, opt RoundTripOptions, want rtWant) {
	t.Helper()
	lines := make([]string, len(rep.Examples))
	for i, ex := range rep.Examples {
		lines[i] = ex.String()
	}
	t.Logf("rows=%d skipped=%d lossy=%d dropped=%d ranges=%d columns=%v not_carried=%v unwritten=%v; examples:\n  %s",
		rep.Rows, rep.Skipped, rep.Lossy, rep.Dropped, rep.Ranges, rep.Columns, rep.NotCarried, rep.Unwritten, strings.Join(lines, "\n  "))
	for _, c := range []struct {
		what      string
		got, want int64
	}{{"rows", rep.Rows, want.rows}, {"skipped", rep.Skipped, want.skipped}, {"lossy", rep.Lossy, want.lossy}, {"dropped", rep.Dropped, want.dropped}} {
		if c.want >= 0 && c.got != c.want {
			t.Errorf("%s = %d, want %d", c.what, c.got, c.want)
		}
	}
	if want.columns != nil && !maps.Equal(rep.Columns, want.columns) {
		t.Errorf("columns %v, want %v", rep.Columns, want.columns)
	}
	if rep.OK() != (rep.Lossy == 0) {
		t.Errorf("OK() = %v with %d lossy rows", rep.OK(), rep.Lossy)
	}
	for _, w := range want.examples {
		if !slices.Contains(lines, w) {
			t.Errorf("no example %q", w)
		}
	}
	if want.pattern != "" {
		re := regexp.MustCompile(want.pattern)
		for _, l := range lines {
			if !re.MatchString(l) {
				t.Errorf("example %q does not match %s", l, want.pattern)
			}
		}
	}
	limit := int64(opt.MaxExamples)
	if limit <= 0 {
		limit = defaultMaxExamples
	}
	for col, n := range rep.Columns {
		var shown int64
		for _, ex := range rep.Examples {
			if ex.Column == col {
				shown++
			}
		}
		if shown != min(n, limit) {
			t.Errorf("column %s: %d examples for %d lossy rows, limit %d", col, shown, n, limit)
		}
	}
	if !slices.Equal(rep.NotCarried, want.notCarried) {
		t.Errorf("not carried %v, want %v", rep.NotCarried, want.notCarried)
	}
	if !slices.Equal(rep.Unwritten, want.unwritten) {
		t.Errorf("unwritten %v, want %v", rep.Unwritten, want.unwritten)
	}
	if want.sampled > 0 {
		read := rep.Rows + rep.Skipped
		if !rep.Sampled || read > want.sampled || read < want.sampled/2 || rep.Ranges < want.minRanges ||
			rep.Lossy == 0 || rep.Lossy == read {
			t.Errorf("sampled %v: %d rows read in %d ranges, %d lossy; want %d..%d rows in at least %d ranges, some lossy, some not",
				rep.Sampled, read, rep.Ranges, rep.Lossy, want.sampled/2, want.sampled, want.minRanges)
		}
	} else if rep.Sampled {
		t.Errorf("a full walk reports itself sampled")
	}
}

// BenchmarkRoundTrip measures the proof over 100,000 rows, all of them and
// a sample of 10,000: the shared test schema's orders (25 columns of every
// type, some TOASTed, an enum and a domain, so rows travel as text) and a
// narrow table of built-in types (rows travel in binary).
//
//	go test -run '^$' -bench RoundTrip -benchtime 1x ./pkg/verify
func BenchmarkRoundTrip(b *testing.B) {
	const rows = 100_000
	e := testkit.Setup(b)
	ctx := context.Background()
	rw := testkit.Connect(b, e.SourceDSN)
	if err := testkit.Seed(ctx, rw, testkit.NewWorkload(rw, 1), rows); err != nil {
		b.Fatal(err)
	}
	narrow := `CREATE TABLE narrow (id bigint PRIMARY KEY, a text, n numeric(12,2), ts timestamptz, j jsonb);
		INSERT INTO narrow SELECT g, 'name ' || g, g / 7.0, '2024-01-01'::timestamptz + g * interval '1 minute',
			jsonb_build_object('g', g) FROM generate_series(1, 100000) g;`
	if err := e.Source.Exec(ctx, "postgres", narrow+"ANALYZE orders; ANALYZE narrow;"); err != nil {
		b.Fatal(err)
	}
	if err := e.Target.Exec(ctx, "postgres", `CREATE TABLE narrow2 (id bigint PRIMARY KEY, name text, n numeric(12,2), ts timestamptz, j jsonb)`); err != nil {
		b.Fatal(err)
	}
	oldConn, err := Connect(ctx, e.SourceDSN)
	if err != nil {
		b.Fatal(err)
	}
	defer oldConn.Close(ctx)
	newConn, err := Connect(ctx, e.TargetDSN)
	if err != nil {
		b.Fatal(err)
	}
	defer newConn.Close(ctx)
	orderCols := map[string]string{"customer_id": "customer_ref", "status_code": "CASE status WHEN 'open' THEN 1 WHEN 'paid' THEN 2 END"}
	for _, c := range []string{"id", "tenant_id", "total", "note", "big", "preferences", "doc", "tags", "nums", "blob", "uid", "created",
		"local_ts", "day", "at_time", "dur", "m", "qty", "ratio", "code", "flags", "label"} {
		orderCols[c] = pgx.Identifier{c}.Sanitize()
	}
	for _, tb := range []struct {
		name     string
		fwd, rev config.TableConfig
	}{
		{"orders", testkit.Tables()[0], config.TableConfig{Source: "public.orders_v2", Target: "public.orders", Columns: orderCols}},
		{"narrow", config.TableConfig{Source: "narrow", Target: "narrow2", Columns: map[string]string{"name": "a"}},
			config.TableConfig{Source: "narrow2", Target: "narrow", Columns: map[string]string{"id": "id", "a": "name", "n": "n", "ts": "ts", "j": "j"}}},
	} {
		fwd, rev := mappings(b, oldConn, newConn, tb.fwd, tb.rev)
		for _, mode := range []struct {
			name string
			opt  RoundTripOptions
		}{{"full", RoundTripOptions{}}, {"sample10k", RoundTripOptions{Sample: 10_000}}} {
			b.Run(tb.name+"/"+mode.name, func(b *testing.B) {
				var rep *RoundTripReport
				for b.Loop() {
					if rep, err = RoundTrip(ctx, oldConn, newConn, fwd, rev, mode.opt); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(rep.Rows+rep.Skipped)/rep.Seconds, "rows/s")
				b.ReportMetric(float64(rep.Rows+rep.Skipped), "rows")
				b.ReportMetric(rep.Seconds, "s")
				b.Logf("%s/%s: %d rows in %d ranges, %.2fs, %.0f rows/s, lossy %d (binary out %v, back %v)", tb.name, mode.name,
					rep.Rows+rep.Skipped, rep.Ranges, rep.Seconds, float64(rep.Rows+rep.Skipped)/rep.Seconds, rep.Lossy,
					fwd.BinarySource(), rev.BinarySource())
			})
		}
	}
}
