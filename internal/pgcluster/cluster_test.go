package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func skipWithoutPG(t *testing.T) {
	t.Helper()
	if os.Getenv(EnvSkip) == "1" {
		t.Skipf("%s=1", EnvSkip)
	}
}

func queryString(t *testing.T, c *Cluster, db, sql string, args ...any) string {
	t.Helper()
	ctx := t.Context()
	conn, err := c.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var s string
	if err := conn.QueryRow(ctx, sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func TestStartDefaults(t *testing.T) {
	t.Parallel()
	c := ForTest(t, Options{Name: "defaults"})

	if c.Port() == 5432 || c.Port() == 0 {
		t.Fatalf("Port() = %d; want a freshly picked port", c.Port())
	}
	wantDSN := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/app?sslmode=disable", c.Port())
	if got := c.DSN("app"); got != wantDSN {
		t.Errorf("DSN = %q, want %q", got, wantDSN)
	}
	if !c.Running() {
		t.Error("Running() = false right after Start")
	}
	for _, p := range []string{c.Dir(), c.DataDir(), c.LogFile(), filepath.Join(c.DataDir(), "PG_VERSION")} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("expected %s to exist: %v", p, err)
		}
	}

	want := map[string]string{
		"wal_level":               "logical",
		"max_replication_slots":   "20",
		"max_wal_senders":         "20",
		"max_connections":         "200",
		"shared_buffers":          "128MB",
		"listen_addresses":        "127.0.0.1",
		"fsync":                   "on",
		"server_encoding":         "UTF8",
		"lc_collate":              "C",
		"port":                    fmt.Sprint(c.Port()),
		"unix_socket_directories": c.Dir(),
	}
	for name, v := range want {
		if got := queryString(t, c, "postgres", "SELECT current_setting($1)", name); got != v {
			t.Errorf("%s = %q, want %q", name, got, v)
		}
	}

	ctx := t.Context()
	if err := c.CreateDB(ctx, "Mixed-Case db"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "Mixed-Case db", `
		CREATE TABLE t (id int PRIMARY KEY);
		INSERT INTO t VALUES (1), (2);`); err != nil {
		t.Fatal(err)
	}
	if got := queryString(t, c, "Mixed-Case db", "SELECT count(*)::text FROM t"); got != "2" {
		t.Errorf("count = %s, want 2", got)
	}
	if err := c.Exec(ctx, "Mixed-Case db", "INSERT INTO t VALUES ($1)", 3); err != nil {
		t.Fatalf("Exec with args: %v", err)
	}

	// Logical decoding must really work, not just be configured.
	if err := c.Exec(ctx, "Mixed-Case db", "SELECT pg_create_logical_replication_slot('s1', 'pgoutput')"); err != nil {
		t.Fatal(err)
	}
	rconn, err := pgconn.Connect(ctx, c.ReplicationDSN("Mixed-Case db"))
	if err != nil {
		t.Fatalf("replication connection: %v", err)
	}
	defer rconn.Close(context.Background())
	if _, err := rconn.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll(); err != nil {
		t.Fatalf("IDENTIFY_SYSTEM: %v", err)
	}
}

func TestStartOptions(t *testing.T) {
	t.Parallel()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opts func(t *testing.T) Options
		want map[string]string
	}{
		{
			name: "explicit port",
			opts: func(*testing.T) Options { return Options{Port: port} },
			want: map[string]string{"port": fmt.Sprint(port)},
		},
		{
			name: "settings override defaults and are quoted",
			opts: func(*testing.T) Options {
				return Options{Settings: map[string]string{
					"max_connections":  "50",
					"application_name": `it's a \ test`,
					"work_mem":         "8MB",
				}}
			},
			want: map[string]string{
				"max_connections":  "50",
				"application_name": `it's a \ test`,
				"work_mem":         "8MB",
				"wal_level":        "logical",
			},
		},
		{
			name: "logical disabled",
			opts: func(*testing.T) Options { return Options{DisableLogical: true} },
			want: map[string]string{"wal_level": "replica"},
		},
		{
			// t.TempDir is 0700 root-owned when running as root, which
			// exercises making parent directories reachable for postgres.
			name: "nested parent dir with long path",
			opts: func(t *testing.T) Options {
				return Options{Dir: filepath.Join(t.TempDir(), strings.Repeat("deep", 20), "x")}
			},
			want: map[string]string{"wal_level": "logical"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			opts := tt.opts(t)
			c := ForTest(t, opts)
			if opts.Dir != "" && !strings.HasPrefix(c.Dir(), opts.Dir+string(filepath.Separator)) {
				t.Errorf("Dir() = %s, want it under %s", c.Dir(), opts.Dir)
			}
			for name, v := range tt.want {
				if got := queryString(t, c, "postgres", "SELECT current_setting($1)", name); got != v {
					t.Errorf("%s = %q, want %q", name, got, v)
				}
			}
		})
	}
}

// TestLifecycle checks that committed data and replication slots survive
// every way of bringing the server down and up again, on the same port.
func TestLifecycle(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		down func(ctx context.Context, c *Cluster) error
		up   func(ctx context.Context, c *Cluster) error
	}{
		{
			name: "restart",
			down: func(context.Context, *Cluster) error { return nil },
			up:   func(ctx context.Context, c *Cluster) error { return c.Restart(ctx) },
		},
		{
			name: "stop then start again",
			down: func(ctx context.Context, c *Cluster) error { return c.Stop(ctx) },
			up:   func(ctx context.Context, c *Cluster) error { return c.StartAgain(ctx) },
		},
		{
			name: "kill then start again",
			down: func(_ context.Context, c *Cluster) error { return c.Kill() },
			up:   func(ctx context.Context, c *Cluster) error { return c.StartAgain(ctx) },
		},
		{
			name: "kill twice in a row",
			down: func(ctx context.Context, c *Cluster) error {
				if err := c.Kill(); err != nil {
					return err
				}
				if err := c.StartAgain(ctx); err != nil {
					return err
				}
				return c.Kill()
			},
			up: func(ctx context.Context, c *Cluster) error { return c.StartAgain(ctx) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			c := ForTest(t, Options{})
			port := c.Port()

			// Separate Execs: a multi-statement simple query is one implicit
			// transaction, and slot creation refuses to run after writes.
			if err := c.Exec(ctx, "postgres", "SELECT pg_create_logical_replication_slot('tandem_slot', 'pgoutput')"); err != nil {
				t.Fatal(err)
			}
			if err := c.Exec(ctx, "postgres", "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)"); err != nil {
				t.Fatal(err)
			}
			// An open transaction must not survive a crash or shutdown.
			open, err := c.Connect(ctx, "postgres")
			if err != nil {
				t.Fatal(err)
			}
			defer open.Close(context.Background())
			if _, err := open.Exec(ctx, "BEGIN; INSERT INTO t VALUES (2)"); err != nil {
				t.Fatal(err)
			}

			if err := tt.down(ctx, c); err != nil {
				t.Fatalf("down: %v", err)
			}
			if err := tt.up(ctx, c); err != nil {
				t.Fatalf("up: %v", err)
			}

			if !c.Running() {
				t.Error("Running() = false after coming back up")
			}
			if c.Port() != port {
				t.Errorf("port changed from %d to %d", port, c.Port())
			}
			if got := queryString(t, c, "postgres", "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"); got != "1" {
				t.Errorf("rows after %s = %q, want only the committed row 1", tt.name, got)
			}
			if got := queryString(t, c, "postgres", "SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = 'tandem_slot'"); got != "1" {
				t.Errorf("replication slot missing after %s", tt.name)
			}
		})
	}
}

func TestKillWhenNotRunning(t *testing.T) {
	t.Parallel()
	c := ForTest(t, Options{})
	if err := c.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	if c.Running() {
		t.Fatal("Running() = true after Stop")
	}
	if err := c.Kill(); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Kill on stopped cluster = %v, want ErrNotRunning", err)
	}
}

func TestDestroy(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		before func(ctx context.Context, c *Cluster) error
	}{
		{"running", func(context.Context, *Cluster) error { return nil }},
		{"stopped", func(ctx context.Context, c *Cluster) error { return c.Stop(ctx) }},
		{"killed", func(_ context.Context, c *Cluster) error { return c.Kill() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			skipWithoutPG(t)
			ctx := t.Context()
			c, err := Start(ctx, Options{Name: "destroy"})
			if err != nil {
				t.Fatal(err)
			}
			// Open a session so destroy has to deal with a live backend.
			conn, err := c.Connect(ctx, "postgres")
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())

			if err := tt.before(ctx, c); err != nil {
				t.Fatal(err)
			}
			if err := c.Destroy(ctx); err != nil {
				t.Fatalf("Destroy: %v", err)
			}
			if _, err := os.Stat(c.Dir()); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Dir %s still exists after Destroy (stat err %v)", c.Dir(), err)
			}
			if c.Running() {
				t.Error("Running() = true after Destroy")
			}
			if nc, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", c.Port()), time.Second); err == nil {
				nc.Close()
				t.Errorf("port %d still accepts connections after Destroy", c.Port())
			}
			if err := c.Destroy(ctx); err != nil {
				t.Errorf("second Destroy: %v", err)
			}
		})
	}
}

func TestStartFailureReportsServerLogAndCleansUp(t *testing.T) {
	t.Parallel()
	skipWithoutPG(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Cleanup, not defer: the parallel subtests run after this function returns.
	t.Cleanup(func() { busy.Close() })
	busyPort := busy.Addr().(*net.TCPAddr).Port

	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{
			name:    "invalid setting value",
			opts:    Options{Settings: map[string]string{"shared_buffers": "plenty"}},
			wantErr: `invalid value for parameter "shared_buffers"`,
		},
		{
			name:    "explicit port already taken",
			opts:    Options{Port: busyPort},
			wantErr: "Address already in use",
		},
		{
			name:    "invalid setting name",
			opts:    Options{Settings: map[string]string{"bad name\n": "x"}},
			wantErr: "invalid setting name",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.opts.Dir = t.TempDir()
			c, err := Start(t.Context(), tt.opts)
			if err == nil {
				_ = c.Destroy(context.Background())
				t.Fatal("Start succeeded, want error")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error does not mention %q:\n%v", tt.wantErr, err)
			}
			left, _ := os.ReadDir(tt.opts.Dir)
			if len(left) != 0 {
				t.Errorf("failed Start left %v behind in %s", left, tt.opts.Dir)
			}
		})
	}
}

// TestForTestIgnoresShort guards the project rule that -short means "fewer
// rounds", never "no database": under `go test -short` this must still get a
// working cluster.
func TestForTestIgnoresShort(t *testing.T) {
	t.Parallel()
	skipWithoutPG(t)
	var got int
	t.Run("inner", func(t *testing.T) {
		c := ForTest(t, Options{})
		var n int
		conn, err := pgx.Connect(t.Context(), c.DSN("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if err := conn.QueryRow(t.Context(), "SELECT 1").Scan(&n); err != nil {
			t.Fatal(err)
		}
		got = n
	})
	if got != 1 {
		t.Fatalf("ForTest did not provide a working cluster (testing.Short() = %v)", testing.Short())
	}
}

func TestRenderConf(t *testing.T) {
	t.Parallel()
	base := []byte("# initdb stuff\nmax_connections = 100")
	got, err := renderConf(base, 5555, "/tmp/x y", true, map[string]string{
		"work_mem":         "4MB",
		"application_name": "o'neil",
		"max_connections":  "7",
	})
	if err != nil {
		t.Fatal(err)
	}
	s := string(got)
	if !strings.HasPrefix(s, string(base)+"\n") {
		t.Errorf("initdb's configuration was not preserved verbatim:\n%s", s)
	}
	// Order matters: postgresql.conf is last-one-wins, so user settings must
	// follow the defaults, and sorted keys keep the file deterministic.
	wantInOrder := []string{
		"listen_addresses = '127.0.0.1'",
		"port = '5555'",
		"unix_socket_directories = '/tmp/x y'",
		"wal_level = 'logical'",
		"max_replication_slots = '20'",
		"max_wal_senders = '20'",
		"shared_buffers = '128MB'",
		"max_connections = '200'",
		"application_name = 'o''neil'",
		"max_connections = '7'",
		"work_mem = '4MB'",
	}
	pos := 0
	for _, line := range wantInOrder {
		i := strings.Index(s[pos:], line+"\n")
		if i < 0 {
			t.Fatalf("missing or out of order: %q in\n%s", line, s)
		}
		pos += i + len(line)
	}
	if strings.Contains(s, "fsync") {
		t.Error("fsync must stay at its default (on)")
	}

	replica, err := renderConf(nil, 1, "/s", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(replica), "wal_level = 'replica'\n") {
		t.Errorf("DisableLogical did not set wal_level=replica:\n%s", replica)
	}

	for _, bad := range []map[string]string{
		{"a = b\nfsync": "off"},
		{"": "x"},
		{"ok": "multi\nline"},
	} {
		if _, err := renderConf(nil, 1, "/s", true, bad); err == nil {
			t.Errorf("renderConf accepted %q", bad)
		}
	}
}

func TestSanitizeName(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"":                      "pg",
		"source":                "source",
		"TestX/sub case":        "TestX_sub_case",
		"../../etc":             "_etc",
		strings.Repeat("a", 40): strings.Repeat("a", 24),
	}
	for in, want := range tests {
		if got := sanitizeName(in); got != want {
			t.Errorf("sanitizeName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTailFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(path, []byte("first line\nsecond line\nthird line\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		offset   int64
		maxBytes int
		want     string
	}{
		{"whole file", 0, 1 << 10, "first line\nsecond line\nthird line"},
		{"from offset", int64(len("first line\n")), 1 << 10, "second line\nthird line"},
		{"cut to whole lines", 0, 15, "third line"},
		{"offset past end", 1 << 20, 10, ""},
	}
	for _, tt := range tests {
		if got := tailFile(path, tt.offset, tt.maxBytes); got != tt.want {
			t.Errorf("%s: tailFile = %q, want %q", tt.name, got, tt.want)
		}
	}
	if got := tailFile(filepath.Join(t.TempDir(), "missing"), 0, 10); !strings.Contains(got, "cannot read") {
		t.Errorf("tailFile on missing file = %q", got)
	}
}
