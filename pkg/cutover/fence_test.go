package cutover

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
	"github.com/tandem-migrate/tandem/pkg/dial"
)

func TestFenceSQL(t *testing.T) {
	for _, tc := range []struct{ db, fence, unfence string }{
		{"shop", `ALTER DATABASE "shop" SET default_transaction_read_only = on`, `ALTER DATABASE "shop" RESET default_transaction_read_only`},
		{`we"ird db`, `ALTER DATABASE "we""ird db" SET default_transaction_read_only = on`, `ALTER DATABASE "we""ird db" RESET default_transaction_read_only`},
	} {
		if got := fenceSQL(tc.db); got != tc.fence {
			t.Errorf("fenceSQL(%q) = %s", tc.db, got)
		}
		if got := unfenceSQL(tc.db); got != tc.unfence {
			t.Errorf("unfenceSQL(%q) = %s", tc.db, got)
		}
	}
}

// TestFence fences a real database: an application session that started
// before is ended, a new one may read but not write, tandem's own session
// is spared and may still write, and lifting the fence lets writes in.
func TestFence(t *testing.T) {
	ctx := context.Background()
	c := pgcluster.ForTest(t, pgcluster.Options{Name: "fence"})
	dsn := c.DSN("postgres")
	if err := c.Exec(ctx, "postgres", `CREATE TABLE t (id int)`); err != nil {
		t.Fatal(err)
	}
	connect := func(s *dial.Spec) *pgx.Conn {
		var conn *pgx.Conn
		var err error
		if s == nil {
			conn, err = pgx.Connect(ctx, dsn)
		} else {
			conn, err = dial.Open(ctx, dsn, *s)
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	spec := dial.Short("m", "cutover")
	ceremony, app, other := connect(&spec), connect(nil), connect(&spec)
	if err := canFence(ctx, ceremony); err != nil {
		t.Fatalf("a superuser may fence: %v", err)
	}
	ended, err := fence(ctx, ceremony, 10*time.Second)
	if err != nil || ended != 1 {
		t.Fatalf("fence: ended %d, %v; want the one application session", ended, err)
	}
	if on, err := fenced(ctx, ceremony); !on || err != nil {
		t.Fatalf("fenced = %v, %v", on, err)
	}
	if err := app.Ping(ctx); err == nil {
		t.Error("the application session that started before the fence is still alive")
	}
	if _, err := other.Exec(ctx, `INSERT INTO t VALUES (1)`); err != nil {
		t.Errorf("tandem's own session: %v", err)
	}
	late := connect(nil)
	var n int
	if err := late.QueryRow(ctx, `SELECT count(*) FROM t`).Scan(&n); err != nil || n != 1 {
		t.Errorf("a new session reads: %d, %v", n, err)
	}
	_, err = late.Exec(ctx, `INSERT INTO t VALUES (2)`)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		t.Errorf("a new session's write: %v, want read-only (25006)", err)
	}
	if err := unfence(ctx, ceremony); err != nil {
		t.Fatal(err)
	}
	if on, _ := fenced(ctx, ceremony); on {
		t.Error("still fenced after unfence")
	}
	if _, err := connect(nil).Exec(ctx, `INSERT INTO t VALUES (3)`); err != nil {
		t.Errorf("a write after the fence is lifted: %v", err)
	}
}
