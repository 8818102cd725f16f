package pipeline_test

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tandem-migrate/tandem/internal/testkit"
	"github.com/tandem-migrate/tandem/pkg/config"
)

// Partitioned on the old side (pay, by month) and plain on the new one;
// plain on the old side (ledger) and partitioned on the new one.
const partSourceDDL = `
CREATE TABLE pay (id bigint NOT NULL, at date NOT NULL, amount numeric(10,2), note text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE ledger (id bigint PRIMARY KEY, at date NOT NULL, v integer);
ALTER TABLE ledger REPLICA IDENTITY FULL;
CREATE TABLE other (id bigint PRIMARY KEY, v integer);
`

const partTargetDDL = `
CREATE TABLE pay (id bigint NOT NULL, at date NOT NULL, amount numeric(10,2), note text, PRIMARY KEY (id, at));
CREATE TABLE ledger (id bigint NOT NULL, at date NOT NULL, v integer, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE ledger_old PARTITION OF ledger FOR VALUES FROM (MINVALUE) TO ('2024-07-01');
CREATE TABLE ledger_new PARTITION OF ledger FOR VALUES FROM ('2024-07-01') TO (MAXVALUE);
`

// months are the partitions of pay created before tandem starts; one more
// (2025-01) is attached while it streams.
func partitionDDL(month int) string {
	from := time.Date(2024, time.Month(month), 1, 0, 0, 0, 0, time.UTC)
	to := from.AddDate(0, 1, 0)
	return fmt.Sprintf("CREATE TABLE pay_%s PARTITION OF pay FOR VALUES FROM ('%s') TO ('%s')",
		from.Format("2006_01"), from.Format("2006-01-02"), to.Format("2006-01-02"))
}

func partitionTables() []config.TableConfig {
	return append(testkit.Tables(),
		config.TableConfig{Source: "public.pay", Target: "public.pay"},
		config.TableConfig{Source: "public.ledger", Target: "public.ledger"},
	)
}

// TestPartitionedTables: a partitioned old table is one table to the
// user, whether the publication is tandem's (published via the root) or a
// user's that names the partitions: inserts into several partitions,
// updates that move rows across partitions, deletes, and a partition
// attached mid-stream all arrive, a restart works, and the new table equals
// the old one. The opposite direction (a plain old table, a partitioned
// new one) rides along. A table in the publication that no mapping names
// is skipped and counted; a TRUNCATE of one partition, which cannot be
// applied to the un-partitioned new table, stops the daemon.
func TestPartitionedTables(t *testing.T) {
	for _, userPub := range []bool{false, true} {
		name := "tandem_publication"
		if userPub {
			name = "user_publication_of_partitions"
		}
		t.Run(name, func(t *testing.T) { partitioned(t, userPub) })
	}
}

func partitioned(t *testing.T, userPub bool) {
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	exec := func(conn *pgx.Conn, sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(src, partSourceDDL)
	for m := 1; m <= 12; m++ {
		exec(src, partitionDDL(m))
	}
	exec(tgt, partTargetDDL)
	// History for the backfill, spread over every partition.
	exec(src, `INSERT INTO pay SELECT g, date '2024-01-01' + (g % 366), g / 10.0, 'p' || g FROM generate_series(1, 3000) g`)
	exec(src, `INSERT INTO ledger SELECT g, date '2024-01-01' + (g % 366), g FROM generate_series(1, 1000) g`)

	slot := "part"
	cfg := env.Config(slot)
	cfg.Tables = partitionTables()
	on := true
	cfg.Backfill.Enabled = &on
	if userPub {
		// A publication a human made: it names the partitions, not the
		// parent, and holds a table no mapping names.
		exec(src, `CREATE PUBLICATION part FOR TABLE orders, events, marker, pay, ledger, other`)
		off := false
		cfg.Source.CreatePublication = &off
	}

	r := startConfig(t, cfg)
	testkit.WaitBackfill(t, tgt, cfg.Name, len(cfg.Tables), time.Minute, r.alive)

	rnd := rand.New(rand.NewSource(7))
	nextID := int64(10000)
	writes := func(n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			day := rnd.Intn(366)
			switch rnd.Intn(5) {
			case 0, 1:
				nextID++
				exec(src, `INSERT INTO pay VALUES ($1, date '2024-01-01' + $2::int, $3, 'new')`, nextID, day, rnd.Intn(1000))
			case 2: // moves the row to another month's partition
				exec(src, `UPDATE pay SET at = date '2024-01-01' + $2::int, note = 'moved' WHERE id = $1`, 1+rnd.Int63n(3000), day)
			case 3:
				exec(src, `DELETE FROM pay WHERE id = $1`, 1+rnd.Int63n(3000))
			case 4: // moves the row across the new side's partitions
				exec(src, `UPDATE ledger SET at = date '2024-01-01' + $2::int, v = v + 1 WHERE id = $1`, 1+rnd.Int63n(1000), day)
			}
		}
	}
	// sameAfterMark waits for everything written so far, then compares.
	sameAfterMark := func(id int64) {
		t.Helper()
		if err := testkit.Mark(ctx, src, id); err != nil {
			t.Fatal(err)
		}
		testkit.WaitMark(t, tgt, id, time.Minute, r.alive)
		testkit.SameTable(t, src, tgt, "pay", "id, at")
		testkit.SameTable(t, src, tgt, "ledger", "id, at")
	}
	writes(300)
	exec(src, `INSERT INTO other VALUES (1, 1), (2, 2)`)
	// Attached while streaming: its rows must arrive too.
	exec(src, `CREATE TABLE pay_2025_01 (LIKE pay INCLUDING ALL)`)
	exec(src, `ALTER TABLE pay ATTACH PARTITION pay_2025_01 FOR VALUES FROM ('2025-01-01') TO ('2025-02-01')`)
	exec(src, `INSERT INTO pay SELECT g, date '2025-01-01' + (g % 31), 1, 'attached' FROM generate_series(20001, 20100) g`)
	exec(src, `UPDATE pay SET at = date '2025-01-15' WHERE id BETWEEN 1 AND 20`)
	writes(100)
	sameAfterMark(1)
	if n := queryCount(t, tgt, `SELECT count(*) FROM pay WHERE note = 'attached' OR at >= '2025-01-01'`); n < 100 {
		t.Fatalf("rows of the partition attached mid-stream: %d on the new table, want >= 100", n)
	}
	skipped := testutil.ToFloat64(r.p.Metrics().Skipped.WithLabelValues("public.other", "not_configured"))
	if userPub && skipped != 2 {
		t.Fatalf("changes to public.other (in the publication, mapped by nothing): %v counted as skipped, want 2", skipped)
	}

	// A restart finds the publication it made (or the user's) complete,
	// though pg_publication_tables lists partitions, not the parent.
	r.stop(t)
	r = startConfig(t, cfg)
	writes(100)
	sameAfterMark(2)

	if !userPub {
		var viaRoot bool
		if err := src.QueryRow(ctx, `SELECT pubviaroot FROM pg_publication WHERE pubname = $1`, slot).Scan(&viaRoot); err != nil || !viaRoot {
			t.Fatalf("tandem's publication should publish via the partition root: %v %v", viaRoot, err)
		}
		return
	}
	// Emptying one partition would have to empty only its rows of the
	// new table: tandem stops instead of truncating the whole table.
	exec(src, `TRUNCATE pay_2024_03`)
	err, ok := r.stopped(time.Minute)
	if !ok {
		t.Fatal("pipeline kept running after a TRUNCATE of one partition")
	}
	if err == nil || !strings.Contains(err.Error(), "TRUNCATE of partition public.pay_2024_03 of public.pay") {
		t.Fatalf("want a stop naming the partition's TRUNCATE, got %v", err)
	}
	if n := queryCount(t, tgt, `SELECT count(*) FROM pay`); n == 0 {
		t.Fatal("the new table was emptied")
	}
}

func queryCount(t *testing.T, conn *pgx.Conn, sql string) int64 {
	t.Helper()
	var n int64
	if err := conn.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}
