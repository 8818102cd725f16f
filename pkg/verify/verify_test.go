package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
	"github.com/tandem-migrate/tandem/pkg/config"
)

const accountsSource = `
CREATE TABLE public.accounts (
	id          bigint PRIMARY KEY,
	full_name   text NOT NULL,
	status_code int NOT NULL,
	meta        jsonb,
	deleted     boolean NOT NULL DEFAULT false,
	legacy      text,
	balance     numeric(12,2) NOT NULL,
	created_at  timestamptz NOT NULL,
	doc         jsonb,
	attrs       json,
	tags        text[],
	blob        bytea,
	note        text,
	ext_id      uuid NOT NULL,
	score       double precision
);
ALTER TABLE public.accounts REPLICA IDENTITY FULL;`

// The target renames full_name, turns status_code into an enum, makes meta
// NOT NULL, widens balance to plain numeric and keeps legacy only as a
// column the mapping drops. Each database runs in another time zone, so
// timestamps only compare equal as instants.
const accountsTarget = `
CREATE TYPE public.account_status AS ENUM ('active', 'suspended', 'closed');
CREATE TABLE public.accounts_v2 (
	id          bigint PRIMARY KEY,
	name        text NOT NULL,
	status      public.account_status NOT NULL,
	meta        jsonb NOT NULL,
	legacy      text,
	balance     numeric NOT NULL,
	created_at  timestamptz NOT NULL,
	doc         jsonb,
	attrs       json,
	tags        text[],
	blob        bytea,
	note        text,
	ext_id      uuid NOT NULL,
	score       double precision
);`

var accountsMapping = config.TableConfig{
	Source: "public.accounts",
	Target: "public.accounts_v2",
	Filter: "NOT deleted",
	Columns: map[string]string{
		"name":   "full_name",
		"status": "CASE status_code WHEN 1 THEN 'active' WHEN 2 THEN 'suspended' ELSE 'closed' END",
		"meta":   "COALESCE(meta, '{}'::jsonb)",
	},
	Drop: []string{"legacy"},
}

// accountRow generates source row i; the same function feeds the target
// through transformAccount, so both are loaded from the same data in Go.
func accountRow(i int) map[string]*string {
	r := map[string]*string{
		"id":          s(strconv.Itoa(i)),
		"full_name":   s(fmt.Sprintf("user %d", i)),
		"status_code": s(strconv.Itoa(i%3 + 1)),
		"meta":        s(fmt.Sprintf(`{"plan": "p%d", "n": %d}`, i%4, i)),
		"deleted":     s(strconv.FormatBool(i%11 == 0)),
		"legacy":      s(fmt.Sprintf("old %d", i)),
		"balance":     s(fmt.Sprintf("%d.%02d", i*7%10000, i%100)),
		// Written with varying offsets: the stored instant is what counts.
		"created_at": s(time.Date(2024, 1, 2, 3, 4, 5, i*1000, time.FixedZone("", (i%5-2)*3600)).Add(time.Duration(i) * time.Minute).Format("2006-01-02 15:04:05.999999-07:00")),
		"doc":        s(fmt.Sprintf(`{"k": "v", "a": {"b": {"c": %d, "d": [1, 2, {"e": "x"}]}}}`, i)),
		"attrs":      s(fmt.Sprintf(`{"z": %d, "a": 2}`, i)),
		"tags":       s(fmt.Sprintf(`{t1,"t %d"}`, i%3)),
		"blob":       s(fmt.Sprintf(`\x%02x%02x00ff`, i%256, i/256%256)),
		"note":       s(fmt.Sprintf("note %d", i)),
		"ext_id":     s(fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i*7919)),
		"score":      s(strconv.FormatFloat(float64(i)/3, 'g', -1, 64)),
	}
	switch {
	case i%5 == 0:
		r["meta"] = nil
	case i%13 == 0:
		r["doc"] = nil
	}
	switch i % 4 {
	case 0:
		r["note"] = s("")
	case 1:
		r["note"] = nil
	}
	switch {
	case i%7 == 0:
		r["tags"] = s("{}")
	case i%9 == 0:
		r["tags"] = nil
	}
	return r
}

// transformAccount is the mapping written out by hand in Go: the expected
// target row, or nil when the filter drops the source row.
func transformAccount(src map[string]*string) map[string]*string {
	if *src["deleted"] == "true" {
		return nil
	}
	out := map[string]*string{}
	for _, c := range []string{"id", "balance", "created_at", "doc", "attrs", "tags", "blob", "note", "ext_id", "score"} {
		out[c] = src[c]
	}
	out["name"] = src["full_name"]
	out["status"] = s(map[string]string{"1": "active", "2": "suspended"}[*src["status_code"]])
	if *out["status"] == "" {
		out["status"] = s("closed")
	}
	out["meta"] = src["meta"]
	if out["meta"] == nil {
		out["meta"] = s("{}")
	}
	out["legacy"] = nil // dropped: left to the target's default
	return out
}

var (
	accountSrcCols = []string{"id", "full_name", "status_code", "meta", "deleted", "legacy", "balance", "created_at", "doc", "attrs", "tags", "blob", "note", "ext_id", "score"}
	accountSrcType = []string{"bigint", "text", "int", "jsonb", "boolean", "text", "numeric", "timestamptz", "jsonb", "json", "text[]", "bytea", "text", "uuid", "float8"}
	accountTgtCols = []string{"id", "name", "status", "meta", "legacy", "balance", "created_at", "doc", "attrs", "tags", "blob", "note", "ext_id", "score"}
	accountTgtType = []string{"bigint", "text", "public.account_status", "jsonb", "text", "numeric", "timestamptz", "jsonb", "json", "text[]", "bytea", "text", "uuid", "float8"}
)

func rowsOf(cols []string, maps []map[string]*string) [][]*string {
	out := make([][]*string, len(maps))
	for i, m := range maps {
		out[i] = make([]*string, len(cols))
		for j, c := range cols {
			out[i][j] = m[c]
		}
	}
	return out
}

// setupAccounts creates and loads a source and a clean target database
// for n rows. The target is left without connections, ready to clone.
func setupAccounts(t *testing.T, c *pgcluster.Cluster, n int) (src, tgt string) {
	t.Helper()
	src = newDB(t, c, "src", accountsSource)
	tgt = newDB(t, c, "tgt", accountsTarget)
	ctx := context.Background()
	for db, tz := range map[string]string{src: "Asia/Tokyo", tgt: "America/New_York"} {
		if err := c.Exec(ctx, "postgres", fmt.Sprintf("ALTER DATABASE %s SET timezone = '%s'", db, tz)); err != nil {
			t.Fatal(err)
		}
	}
	var srcRows, tgtRows []map[string]*string
	for i := 1; i <= n; i++ {
		r := accountRow(i)
		srcRows = append(srcRows, r)
		if tr := transformAccount(r); tr != nil {
			tgtRows = append(tgtRows, tr)
		}
	}
	(&table{name: "public.accounts", cols: accountSrcCols, types: accountSrcType, rows: rowsOf(accountSrcCols, srcRows)}).load(t, c, src)
	(&table{name: "public.accounts_v2", cols: accountTgtCols, types: accountTgtType, rows: rowsOf(accountTgtCols, tgtRows)}).load(t, c, tgt)
	return src, tgt
}

func accountRows() int {
	if testing.Short() {
		return 600
	}
	return 3000
}

// TestAccounts damages a clean copy of the target in one way per case and
// checks that verify names exactly that row and column, and nothing for
// the cases that only change how a value is spelled.
func TestAccounts(t *testing.T) {
	c := cluster(t)
	src, clean := setupAccounts(t, c, accountRows())
	cases := []struct {
		name   string
		damage string
		want   []expect
	}{
		{name: "clean copy"},
		{"changed value", `UPDATE accounts_v2 SET name = 'mallory' WHERE id = 42`,
			[]expect{{Different, "id=42", "name"}}},
		{"deleted row", `DELETE FROM accounts_v2 WHERE id = 43`,
			[]expect{{Missing, "id=43", ""}}},
		{"extra row", `INSERT INTO accounts_v2 (id, name, status, meta, balance, created_at, ext_id) VALUES (1000000, 'x', 'active', '{}', 1, now(), gen_random_uuid())`,
			[]expect{{Extra, "id=1000000", ""}}},
		{"row the filter excludes", `INSERT INTO accounts_v2 (id, name, status, meta, balance, created_at, ext_id) VALUES (44, 'user 44', 'closed', '{}', 1, now(), gen_random_uuid())`,
			[]expect{{Extra, "id=44", ""}}},
		{"NULL in place of empty string", `UPDATE accounts_v2 SET note = NULL WHERE id = 48`,
			[]expect{{Different, "id=48", "note"}}},
		{"empty string in place of NULL", `UPDATE accounts_v2 SET note = '' WHERE id = 49`,
			[]expect{{Different, "id=49", "note"}}},
		{"numeric with another value", `UPDATE accounts_v2 SET balance = balance + 0.01 WHERE id = 50`,
			[]expect{{Different, "id=50", "balance"}}},
		{"timestamptz shifted by an hour", `UPDATE accounts_v2 SET created_at = created_at + interval '1 hour' WHERE id = 51`,
			[]expect{{Different, "id=51", "created_at"}}},
		{"jsonb changed in a nested key", `UPDATE accounts_v2 SET doc = jsonb_set(doc, '{a,b,c}', '"changed"') WHERE id = 54`,
			[]expect{{Different, "id=54", "doc"}}},
		{"enum from the CASE", `UPDATE accounts_v2 SET status = 'active' WHERE id = 53`,
			[]expect{{Different, "id=53", "status"}}},
		{"COALESCE default", `UPDATE accounts_v2 SET meta = '{"plan": "p1"}' WHERE id = 65`,
			[]expect{{Different, "id=65", "meta"}}},
		{"array element", `UPDATE accounts_v2 SET tags = '{t1,t2}' WHERE id = 58`,
			[]expect{{Different, "id=58", "tags"}}},
		{"empty array in place of NULL", `UPDATE accounts_v2 SET tags = '{}' WHERE id = 9`,
			[]expect{{Different, "id=9", "tags"}}},
		{"bytea", `UPDATE accounts_v2 SET blob = '\x00' WHERE id = 59`,
			[]expect{{Different, "id=59", "blob"}}},
		{"uuid", `UPDATE accounts_v2 SET ext_id = gen_random_uuid() WHERE id = 60`,
			[]expect{{Different, "id=60", "ext_id"}}},
		{"float in the last digit", `UPDATE accounts_v2 SET score = score + 1e-12 WHERE id = 61`,
			[]expect{{Different, "id=61", "score"}}},
		{"two columns of one row", `UPDATE accounts_v2 SET name = 'x', note = 'y' WHERE id = 62`,
			[]expect{{Different, "id=62", "name,note"}}},
		{"numeric scale is not a difference", `UPDATE accounts_v2 SET balance = round(balance, 4)`, nil},
		{"key order is not a difference", `UPDATE accounts_v2 SET doc = '{"a": {"b": {"d": [1, 2, {"e": "x"}], "c": 63}}, "k": "v"}', attrs = '{"a": 2, "z": 63}' WHERE id = 63`, nil},
		{"a dropped column is not compared", `UPDATE accounts_v2 SET legacy = 'anything'`, nil},
		{"first and last rows", fmt.Sprintf(`DELETE FROM accounts_v2 WHERE id IN (1, %d)`, accountRows()-1),
			[]expect{{Missing, "id=1", ""}, {Missing, fmt.Sprintf("id=%d", accountRows()-1), ""}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tgt := cloneDB(t, c, clean)
			if tc.damage != "" {
				if err := c.Exec(context.Background(), tgt, tc.damage); err != nil {
					t.Fatal(err)
				}
			}
			cfg := testConfig(c, src, tgt, accountsMapping)
			rep, err := runVerify(t, c, cfg, Options{ChunkRows: 256})
			if err != nil {
				t.Fatal(err)
			}
			checkDiffs(t, rep.Tables[0], tc.want)
			wantExit := ExitDiffers
			if len(tc.want) == 0 {
				wantExit = ExitEqual
			}
			if rep.ExitCode() != wantExit || rep.OK() != (wantExit == ExitEqual) {
				t.Errorf("exit code %d OK %v, want %d", rep.ExitCode(), rep.OK(), wantExit)
			}
			if tr := rep.Tables[0]; tr.Mode != "range" || tr.Compared != int64(expectedCompared(accountRows(), tc.want)) {
				t.Errorf("mode %s compared %d", tr.Mode, tr.Compared)
			}
		})
	}
}

// expectedCompared is the source rows passing the filter plus extra rows.
func expectedCompared(n int, want []expect) int {
	rows := n - n/11
	for _, w := range want {
		if w.kind == Extra {
			rows++
		}
	}
	return rows
}

// TestReportOutput checks the text and JSON forms a person and a script
// read.
func TestReportOutput(t *testing.T) {
	c := cluster(t)
	src, clean := setupAccounts(t, c, 200)
	tgt := cloneDB(t, c, clean)
	damage := `UPDATE accounts_v2 SET name = 'x' WHERE id = 42; DELETE FROM accounts_v2 WHERE id IN (43, 45);`
	if err := c.Exec(context.Background(), tgt, damage); err != nil {
		t.Fatal(err)
	}
	rep, err := runVerify(t, c, testConfig(c, src, tgt, accountsMapping), Options{ChunkRows: 50, MaxExamples: 1})
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + text.String())
	for _, want := range []string{
		"public.accounts_v2 different id=42 columns=name\n",
		"public.accounts_v2 missing id=43\n",
		"... and 1 more missing",
		"DIFFERS",
		"result: DIFFERS (1 of 1 tables)",
	} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q", want)
		}
	}
	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Tables) != 1 || back.Tables[0].Missing != 2 || *back.Tables[0].Examples[0].Key[0].Value != "42" {
		t.Errorf("JSON round trip: %s", js.String())
	}
}

// TestCompositeKey pages a (text, int) key in chunks of a few rows, so row
// comparisons (a, b) > ($1, $2) cut inside one tenant and across tenants.
// In the second setup the source sorts tenants by ICU rules and the target
// bytewise ("Zeta" < "acme" only on the target): source key ranges would
// overlap on the target, so verify must notice and fall back to keys mode
// rather than count rows twice or not at all.
func TestCompositeKey(t *testing.T) {
	c := cluster(t)
	for _, setup := range []struct {
		srcCollation, tgtCollation, mode string
	}{
		{"C", "C", "range"},
		{"und-x-icu", "C", "keys"},
	} {
		t.Run(setup.srcCollation+" to "+setup.tgtCollation, func(t *testing.T) {
			testCompositeKey(t, c, setup.srcCollation, setup.tgtCollation, setup.mode)
		})
	}
}

func testCompositeKey(t *testing.T, c *pgcluster.Cluster, srcColl, tgtColl, mode string) {
	srcSchema := fmt.Sprintf(`CREATE TABLE events (tenant text COLLATE %q, seq int, payload text, PRIMARY KEY (tenant, seq))`, srcColl)
	tgtSchema := fmt.Sprintf(`CREATE TABLE events_v2 (tenant text COLLATE %q, seq bigint, body text NOT NULL, PRIMARY KEY (tenant, seq))`, tgtColl)
	src := newDB(t, c, "src", srcSchema)
	clean := newDB(t, c, "tgt", tgtSchema)
	var rows [][]*string
	for _, tenant := range []string{"acme", "Beta", "big co", "gamma", "Zeta"} {
		for seq := 1; seq <= 30; seq++ {
			rows = append(rows, []*string{s(tenant), s(strconv.Itoa(seq)), s(fmt.Sprintf("%s-%d", tenant, seq))})
		}
	}
	(&table{name: "events", cols: []string{"tenant", "seq", "payload"}, types: []string{"text", "int", "text"}, rows: rows}).load(t, c, src)
	(&table{name: "events_v2", cols: []string{"tenant", "seq", "body"}, types: []string{"text", "bigint", "text"}, rows: rows}).load(t, c, clean)
	mapping := config.TableConfig{Source: "events", Target: "events_v2", Columns: map[string]string{"body": "payload"}}
	cases := []struct {
		name   string
		damage string
		want   []expect
	}{
		{name: "clean copy"},
		{"damage across tenants", `
UPDATE events_v2 SET body = 'x' WHERE tenant = 'big co' AND seq = 17;
DELETE FROM events_v2 WHERE tenant = 'gamma' AND seq = 3;
DELETE FROM events_v2 WHERE tenant = 'Zeta' AND seq = 30;
INSERT INTO events_v2 VALUES ('acme', 1000, 'new'), ('zzz', 1, 'after all'), ('', 0, 'before all'), ('Beta', 0, 'inside');`,
			[]expect{
				{Different, "tenant='big co',seq=17", "body"},
				{Missing, "tenant=gamma,seq=3", ""},
				{Missing, "tenant=Zeta,seq=30", ""},
				{Extra, "tenant=acme,seq=1000", ""},
				{Extra, "tenant=zzz,seq=1", ""},
				{Extra, "tenant='',seq=0", ""},
				{Extra, "tenant=Beta,seq=0", ""},
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tgt := cloneDB(t, c, clean)
			if tc.damage != "" {
				if err := c.Exec(context.Background(), tgt, tc.damage); err != nil {
					t.Fatal(err)
				}
			}
			rep, err := runVerify(t, c, testConfig(c, src, tgt, mapping), Options{ChunkRows: 7})
			if err != nil {
				t.Fatal(err)
			}
			tr := rep.Tables[0]
			checkDiffs(t, tr, tc.want)
			if tr.Mode != mode || tr.Chunks < 150/7 {
				t.Errorf("mode %s in %d chunks, want mode %s in at least %d", tr.Mode, tr.Chunks, mode, 150/7)
			}
		})
	}
}

// TestMisplacedRows: the servers order the key differently, but not the
// range bounds. Source (ICU) chunks of 2 are {a,B} {c,d} {e,f}; the same
// ranges on the target (bytewise) hold {B} {a,c,d} {e,f}. Row "a" must be
// paired across chunks, in range mode, and damage still found.
func TestMisplacedRows(t *testing.T) {
	c := cluster(t)
	src := newDB(t, c, "src", `CREATE TABLE words (w text COLLATE "und-x-icu" PRIMARY KEY, n int);
INSERT INTO words VALUES ('a', 1), ('B', 2), ('c', 3), ('d', 4), ('e', 5), ('f', 6)`)
	for _, tc := range []struct {
		name, damage string
		want         []expect
	}{
		{"clean copy", "", nil},
		{"misplaced row damaged", "UPDATE words SET n = 0 WHERE w = 'a'", []expect{{Different, "w=a", "n"}}},
		{"misplaced row missing", "DELETE FROM words WHERE w = 'a'", []expect{{Missing, "w=a", ""}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tgt := newDB(t, c, "tgt", `CREATE TABLE words (w text COLLATE "C" PRIMARY KEY, n int);
INSERT INTO words VALUES ('a', 1), ('B', 2), ('c', 3), ('d', 4), ('e', 5), ('f', 6);`+tc.damage)
			rep, err := runVerify(t, c, testConfig(c, src, tgt, config.TableConfig{Source: "words"}), Options{ChunkRows: 2})
			if err != nil {
				t.Fatal(err)
			}
			checkDiffs(t, rep.Tables[0], tc.want)
			if rep.Tables[0].Mode != "range" {
				t.Errorf("mode %s, want range", rep.Tables[0].Mode)
			}
		})
	}
}

// TestComputedKey covers the fallback: the target key is computed from the
// source, so no key range means the same rows on both sides.
func TestComputedKey(t *testing.T) {
	c := cluster(t)
	src := newDB(t, c, "src", `CREATE TABLE items (id int PRIMARY KEY, sku text NOT NULL)`)
	clean := newDB(t, c, "tgt", `CREATE TABLE items_v2 (item_no bigint PRIMARY KEY, sku text NOT NULL)`)
	var srcRows, tgtRows [][]*string
	for i := 1; i <= 300; i++ {
		sku := fmt.Sprintf("SKU-%04d", i)
		srcRows = append(srcRows, []*string{s(strconv.Itoa(i)), s(strings.ToLower(sku))})
		tgtRows = append(tgtRows, []*string{s(strconv.Itoa(1000 + i)), s(sku)})
	}
	(&table{name: "items", cols: []string{"id", "sku"}, types: []string{"int", "text"}, rows: srcRows}).load(t, c, src)
	(&table{name: "items_v2", cols: []string{"item_no", "sku"}, types: []string{"bigint", "text"}, rows: tgtRows}).load(t, c, clean)
	mapping := config.TableConfig{Source: "items", Target: "items_v2", Columns: map[string]string{"item_no": "id + 1000", "sku": "upper(sku)"}}
	tgt := cloneDB(t, c, clean)
	damage := `UPDATE items_v2 SET sku = 'X' WHERE item_no = 1042; DELETE FROM items_v2 WHERE item_no = 1043; INSERT INTO items_v2 VALUES (5, 'SKU-0005')`
	if err := c.Exec(context.Background(), tgt, damage); err != nil {
		t.Fatal(err)
	}
	for _, db := range []string{clean, tgt} {
		rep, err := runVerify(t, c, testConfig(c, src, db, mapping), Options{ChunkRows: 64})
		if err != nil {
			t.Fatal(err)
		}
		var want []expect
		if db == tgt {
			want = []expect{{Different, "item_no=1042", "sku"}, {Missing, "item_no=1043", ""}, {Extra, "item_no=5", ""}}
		}
		checkDiffs(t, rep.Tables[0], want)
		if rep.Tables[0].Mode != "keys" {
			t.Errorf("mode %s, want keys", rep.Tables[0].Mode)
		}
	}
}

// TestNullSourceKey: a source row whose key is NULL can never reach the
// target; keyset pagination must not skip it silently.
func TestNullSourceKey(t *testing.T) {
	c := cluster(t)
	src := newDB(t, c, "src", `CREATE TABLE codes (id int PRIMARY KEY, code text UNIQUE, label text); ALTER TABLE codes REPLICA IDENTITY FULL;
INSERT INTO codes SELECT g, CASE WHEN g = 7 THEN NULL ELSE 'c' || g END, 'l' || g FROM generate_series(1, 50) g`)
	tgt := newDB(t, c, "tgt", `CREATE TABLE codes (code text PRIMARY KEY, label text);
INSERT INTO codes SELECT 'c' || g, 'l' || g FROM generate_series(1, 50) g WHERE g <> 7`)
	mapping := config.TableConfig{Source: "codes", Drop: []string{"id"}}
	rep, err := runVerify(t, c, testConfig(c, src, tgt, mapping), Options{ChunkRows: 10})
	if err != nil {
		t.Fatal(err)
	}
	checkDiffs(t, rep.Tables[0], []expect{{Missing, "code=NULL", ""}})
}

// TestCouldNotCheck: problems that prevent a verdict exit with code 2.
func TestCouldNotCheck(t *testing.T) {
	c := cluster(t)
	src, clean := setupAccounts(t, c, 50)
	tgt := cloneDB(t, c, clean)
	if err := c.Exec(context.Background(), tgt, `UPDATE accounts_v2 SET name = 'x' WHERE id = 3`); err != nil {
		t.Fatal(err)
	}
	missing := config.TableConfig{Source: "public.accounts", Target: "public.nope"}
	cases := []struct {
		name   string
		tables []config.TableConfig
		opts   Options
		errHas string
	}{
		{"unknown table filter", []config.TableConfig{accountsMapping}, Options{Tables: []string{"public.acounts"}}, `"public.acounts"`},
		{"missing target table", []config.TableConfig{accountsMapping, missing}, Options{}, "table not found"},
		{"live without a stream", []config.TableConfig{accountsMapping}, Options{Live: true, WaitTimeout: 300 * time.Millisecond}, "did not reach source LSN"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "live without a stream" {
				if err := c.Exec(context.Background(), tgt, `CREATE SCHEMA IF NOT EXISTS tandem; CREATE TABLE IF NOT EXISTS tandem.checkpoint (name text PRIMARY KEY, lsn pg_lsn NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())`); err != nil {
					t.Fatal(err)
				}
			}
			rep, err := runVerify(t, c, testConfig(c, src, tgt, tc.tables...), tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("err = %v, want it to mention %s", err, tc.errHas)
			}
			if rep.ExitCode() != ExitNotCheck {
				t.Errorf("exit code %d, want %d", rep.ExitCode(), ExitNotCheck)
			}
		})
	}
}

// TestTableFilter selects mappings by source or target name.
func TestTableFilter(t *testing.T) {
	tables := []config.TableConfig{{Source: "public.a", Target: "public.a2"}, {Source: "b", Target: "b"}}
	for _, tc := range []struct {
		names []string
		want  []int
	}{
		{nil, []int{0, 1}},
		{[]string{"a2"}, []int{0}},
		{[]string{"public.b"}, []int{1}},
		{[]string{"b", "public.a"}, []int{1, 0}},
	} {
		got, err := selectTables(tables, tc.names)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("selectTables(%v) = %v, %v; want %v", tc.names, got, err, tc.want)
		}
	}
}

func TestDisplayValue(t *testing.T) {
	for in, want := range map[string]string{"42": "42", "": "''", "a b": "'a b'", "it's": "'it''s'", "NULL": "'NULL'", "x,y": "'x,y'"} {
		if got := displayValue(&in); got != want {
			t.Errorf("displayValue(%q) = %s, want %s", in, got, want)
		}
	}
	if got := displayValue(nil); got != "NULL" {
		t.Errorf("displayValue(nil) = %s", got)
	}
}
