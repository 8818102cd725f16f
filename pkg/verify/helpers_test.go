package verify

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
	"github.com/tandem-migrate/tandem/pkg/config"
)

// One cluster serves every test of the package; each test gets its own
// databases in it. Starting a cluster costs about a second, a database a
// few milliseconds.
var (
	sharedOnce    sync.Once
	sharedCluster *pgcluster.Cluster
	sharedErr     error
	dbSeq         atomic.Int64
)

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedCluster != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := sharedCluster.Destroy(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "destroy test cluster:", err)
		}
		cancel()
	}
	os.Exit(code)
}

func cluster(t *testing.T) *pgcluster.Cluster {
	t.Helper()
	if os.Getenv(pgcluster.EnvSkip) == "1" {
		t.Skipf("%s=1: skipping test that needs a PostgreSQL cluster", pgcluster.EnvSkip)
	}
	sharedOnce.Do(func() {
		sharedCluster, sharedErr = pgcluster.Start(context.Background(), pgcluster.Options{Name: "verify"})
	})
	if sharedErr != nil {
		t.Fatalf("pgcluster: %v", sharedErr)
	}
	return sharedCluster
}

// newDB creates a database with the given schema and returns its name.
func newDB(t *testing.T, c *pgcluster.Cluster, prefix, schema string) string {
	t.Helper()
	ctx := context.Background()
	name := fmt.Sprintf("%s_%d", prefix, dbSeq.Add(1))
	if err := c.CreateDB(ctx, name); err != nil {
		t.Fatal(err)
	}
	if schema != "" {
		if err := c.Exec(ctx, name, schema); err != nil {
			t.Fatal(err)
		}
	}
	return name
}

// cloneDB copies a database (no connections may be open to it).
func cloneDB(t *testing.T, c *pgcluster.Cluster, from string) string {
	t.Helper()
	name := fmt.Sprintf("%s_c%d", from, dbSeq.Add(1))
	err := c.Exec(context.Background(), "postgres", fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s",
		pgx.Identifier{name}.Sanitize(), pgx.Identifier{from}.Sanitize()))
	if err != nil {
		t.Fatal(err)
	}
	return name
}

func connect(t *testing.T, c *pgcluster.Cluster, db string) *pgx.Conn {
	t.Helper()
	conn, err := Connect(context.Background(), c.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// table is test data in text form: rows of nullable values, one type per
// column, loaded through unnest so any type can be given as text.
type table struct {
	name  string
	cols  []string
	types []string
	rows  [][]*string
}

func (tb *table) load(t *testing.T, c *pgcluster.Cluster, db string) {
	t.Helper()
	ctx := context.Background()
	conn, err := c.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	params := make([]string, len(tb.cols))
	names := make([]string, len(tb.cols))
	exprs := make([]string, len(tb.cols))
	quoted := make([]string, len(tb.cols))
	for i := range tb.cols {
		params[i] = fmt.Sprintf("$%d::text[]", i+1)
		names[i] = fmt.Sprintf("c%d", i)
		exprs[i] = fmt.Sprintf("u.c%d::%s", i, tb.types[i])
		quoted[i] = pgx.Identifier{tb.cols[i]}.Sanitize()
	}
	sql := fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM unnest(%s) AS u(%s)",
		tb.name, strings.Join(quoted, ", "), strings.Join(exprs, ", "), strings.Join(params, ", "), strings.Join(names, ", "))
	args := make([]any, len(tb.cols))
	for i := range tb.cols {
		col := make([]*string, len(tb.rows))
		for j, r := range tb.rows {
			col[j] = r[i]
		}
		args[i] = col
	}
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("load %s: %v", tb.name, err)
	}
}

func s(v string) *string { return &v }

func testConfig(c *pgcluster.Cluster, src, tgt string, tables ...config.TableConfig) *config.Config {
	cfg := &config.Config{
		Name:   "verifytest",
		Source: config.SourceConfig{DSN: c.DSN(src), Slot: "verifytest", Publication: "verifytest"},
		Target: config.TargetConfig{DSN: c.DSN(tgt)},
		Tables: tables,
	}
	cfg.ApplyDefaults()
	return cfg
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// runVerify verifies with fresh connections and returns the report.
func runVerify(t *testing.T, c *pgcluster.Cluster, cfg *config.Config, opts Options) (*Report, error) {
	t.Helper()
	src := connect(t, c, dbName(cfg.Source.DSN))
	tgt := connect(t, c, dbName(cfg.Target.DSN))
	return Run(context.Background(), cfg, src, tgt, opts, testLogger(t))
}

func dbName(dsn string) string {
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		panic(err)
	}
	return cc.Database
}

// expect is one differing row a test expects, as the report prints it.
type expect struct {
	kind Kind
	key  string
	cols string // comma-separated differing columns
}

// checkDiffs asserts the table report lists exactly the expected rows.
func checkDiffs(t *testing.T, tr TableReport, want []expect) {
	t.Helper()
	counts := map[Kind]int64{}
	for _, w := range want {
		counts[w.kind]++
	}
	if tr.Different != counts[Different] || tr.Missing != counts[Missing] || tr.Extra != counts[Extra] {
		t.Errorf("%s: different=%d missing=%d extra=%d, want %d %d %d; examples: %v",
			tr.Target, tr.Different, tr.Missing, tr.Extra, counts[Different], counts[Missing], counts[Extra], tr.Examples)
	}
	if tr.Compared != tr.Equal+tr.Diffs() {
		t.Errorf("compared %d != equal %d + diffs %d", tr.Compared, tr.Equal, tr.Diffs())
	}
	got := map[string]bool{}
	for _, d := range tr.Examples {
		got[d.String()] = true
	}
	for _, w := range want {
		line := string(w.kind) + " " + w.key
		if w.cols != "" {
			line += " columns=" + w.cols
		}
		if !got[line] {
			t.Errorf("missing example %q; got %v", line, tr.Examples)
		}
	}
}

// connectRW opens a plain (writable) connection for test setup.
func connectRW(t *testing.T, c *pgcluster.Cluster, db string) *pgx.Conn {
	t.Helper()
	conn, err := c.Connect(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
