package dial_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
	"github.com/tandem-migrate/tandem/pkg/dial"
)

func TestConfig(t *testing.T) {
	const base = "postgres://tandem:s3cret@db.internal:5432/shop"
	tests := []struct {
		name    string
		dsn     string
		spec    dial.Spec
		connect time.Duration
		want    map[string]string // runtime parameters; "" means absent
	}{
		{"short session", base, dial.Short("orders_v2", "poll"), dial.ConnectTimeout,
			map[string]string{"application_name": "tandem/orders_v2/poll", "statement_timeout": "60000", "lock_timeout": "10000", "replication": ""}},
		{"long reads", base, dial.Long("orders_v2", "backfill"), dial.ConnectTimeout,
			map[string]string{"application_name": "tandem/orders_v2/backfill", "statement_timeout": "900000", "lock_timeout": "60000"}},
		{"apply session waits for locks", base, dial.Apply("orders_v2", 5*time.Minute), dial.ConnectTimeout,
			map[string]string{"application_name": "tandem/orders_v2/target", "statement_timeout": "300000", "lock_timeout": "0"}},
		{"replication never times out a statement", base + "?statement_timeout=5s", dial.Replication("orders_v2"), dial.ConnectTimeout,
			map[string]string{"application_name": "tandem/orders_v2/replication", "replication": "database", "statement_timeout": "0", "lock_timeout": "0"}},
		{"the DSN's own settings win", base + "?connect_timeout=3&statement_timeout=2s&lock_timeout=1s", dial.Short("m", "status"), 3 * time.Second,
			map[string]string{"statement_timeout": "2s", "lock_timeout": "1s"}},
		{"the name is tandem's whatever the DSN says", base + "?application_name=psql", dial.Short("m", "verify"), dial.ConnectTimeout,
			map[string]string{"application_name": "tandem/m/verify"}},
		{"extra setting", base, dial.Long("m", "backfill").With("synchronous_commit", "on"), dial.ConnectTimeout,
			map[string]string{"synchronous_commit": "on", "statement_timeout": "900000"}},
		{"no migration name", base, dial.Long("", "verify"), dial.ConnectTimeout,
			map[string]string{"application_name": "tandem/verify"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cc, err := dial.Config(tt.dsn, tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			if cc.ConnectTimeout != tt.connect {
				t.Errorf("connect timeout %s, want %s", cc.ConnectTimeout, tt.connect)
			}
			if cc.DialFunc == nil {
				t.Error("no dialer")
			}
			for k, want := range tt.want {
				if got := cc.RuntimeParams[k]; got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
		})
	}
}

func TestErrorsCarryNoPassword(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	for _, dsn := range []string{
		"postgres://tandem:s3cret-pw@" + addr + "/shop?sslmode=disable",
		"host=127.0.0.1 port=" + strings.Split(addr, ":")[1] + " user=tandem password=s3cret-pw sslmode=disable",
		"postgres://tandem:s3cret-pw@[::1:5432/shop", // does not parse
	} {
		_, err := dial.Open(context.Background(), dsn, dial.Short("m", "validate"))
		if err == nil {
			t.Fatalf("%s: connected", dsn)
		}
		if strings.Contains(err.Error(), "s3cret-pw") {
			t.Errorf("error shows the password: %v", err)
		}
	}
}

// TestConnectTimeout: a host that accepts and never answers fails the
// connection after the default connect timeout instead of hanging.
func TestConnectTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*dial.ConnectTimeout)
	defer cancel()
	_, err = dial.Open(ctx, "postgres://tandem@"+ln.Addr().String()+"/shop?sslmode=disable", dial.Short("m", "validate"))
	took := time.Since(start)
	if err == nil {
		t.Fatal("connected to a server that never answers")
	}
	if ctx.Err() != nil || took > 2*dial.ConnectTimeout {
		t.Fatalf("gave up after %s (%v), want about %s", took, err, dial.ConnectTimeout)
	}
	t.Logf("gave up after %s: %v", took.Round(time.Millisecond), err)
}

// TestSessions: the settings reach the server, for each kind of session.
func TestSessions(t *testing.T) {
	c := pgcluster.ForTest(t, pgcluster.Options{Name: "dial"})
	ctx := context.Background()
	for _, tt := range []struct {
		spec            dial.Spec
		app, stmt, lock string
	}{
		{dial.Short("orders", "poll"), "tandem/orders/poll", "1min", "10s"},
		{dial.Long("orders", "backfill"), "tandem/orders/backfill", "15min", "1min"},
		{dial.Apply("orders", 90*time.Second), "tandem/orders/target", "90s", "0"},
	} {
		conn, err := dial.Open(ctx, c.DSN("postgres"), tt.spec)
		if err != nil {
			t.Fatal(err)
		}
		var app, stmt, lock string
		err = conn.QueryRow(ctx, `SELECT current_setting('application_name'), current_setting('statement_timeout'), current_setting('lock_timeout')`).Scan(&app, &stmt, &lock)
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if app != tt.app || stmt != tt.stmt || lock != tt.lock {
			t.Errorf("%s: application_name %q, statement_timeout %s, lock_timeout %s; want %q, %s, %s", tt.spec.Role, app, stmt, lock, tt.app, tt.stmt, tt.lock)
		}
	}
	// The replication connection: no statement timeout even when the
	// role's default has one.
	if err := c.Exec(ctx, "postgres", `ALTER ROLE CURRENT_USER SET statement_timeout = '1s'`); err != nil {
		t.Fatal(err)
	}
	conn, err := dial.OpenPg(ctx, c.DSN("postgres"), dial.Replication("orders"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	res, err := conn.Exec(ctx, `SHOW statement_timeout`).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(res[0].Rows[0][0]); got != "0" {
		t.Errorf("replication connection: statement_timeout %s, want 0", got)
	}
}
