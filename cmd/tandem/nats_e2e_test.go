package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/internal/natstest"
	"github.com/tandem-migrate/tandem/internal/testkit"
)

// TestNATSExactlyOnce runs the fan-out to JetStream beside the new
// database under a random workload, kills tandem with SIGKILL ten times
// (some while it copies history), then stops NATS for 30 seconds while
// the old database keeps writing. A consumer that reads the stream from
// its start must find every committed change exactly once, transactions
// whole and in commit order, and an image equal to the new database's
// rows, which testkit.Compare proves equal to the old database's through
// the mapping.
func TestNATSExactlyOnce(t *testing.T) {
	kills, outage := 10, 30*time.Second
	if testing.Short() {
		kills, outage = 4, 8*time.Second
	}
	ctx := context.Background()
	env := testkit.Setup(t)
	srv := natstest.Start(t)
	src := testkit.Connect(t, env.SourceDSN)
	if err := testkit.Seed(ctx, src, testkit.NewWorkload(src, 41), 3000); err != nil {
		t.Fatal(err)
	}
	tgt := testkit.Connect(t, env.TargetDSN)
	installLedger(t, tgt)
	const slot = "fanout"
	cfg := writeConfig(t, env.YAMLWithBackfill(slot, "{enabled: true, chunk_rows: 200, rows_per_second: 1500}",
		fmt.Sprintf("nats: {url: %q, create_stream: true, ack_timeout: 2s}\n", srv.URL())))
	if r := tandemCmd(t, "validate", "--config", cfg); r.code != 0 || !strings.Contains(r.stdout, "created JetStream stream TANDEM_FANOUT") {
		t.Fatalf("validate: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	d := startDaemon(t, cfg)
	waitStreaming(t, src, slot)
	// The ledger counts every write of a marker row, and a backfill
	// chunk rewrites rows the stream applied: ledger rows start once the
	// (empty) marker table's copy is done.
	waitTableCopied(t, env.TargetDSN, slot, "public.marker", d.alive)
	wr := startWriterAt(t, env.SourceDSN, 42, 3000, 100_000)
	seed := time.Now().UnixNano()
	t.Logf("kill schedule seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	for i := 1; i <= kills; i++ {
		time.Sleep(300*time.Millisecond + time.Duration(rng.Int63n(int64(time.Second))))
		if err := d.alive(); err != nil {
			t.Fatalf("before kill %d: %v", i, err)
		}
		d.kill()
		d = startDaemon(t, cfg)
	}
	time.Sleep(time.Second)
	srv.Stop()
	t.Logf("NATS stopped for %s after %d kills and %d writer steps", outage, kills, wr.steps.Load())
	time.Sleep(outage)
	if err := d.alive(); err != nil {
		t.Fatalf("during the NATS outage: %v", err)
	}
	srv.Restart()
	time.Sleep(2 * time.Second)
	if err := wr.finish(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	if !wr.bigHit.Load() {
		t.Fatalf("the writer managed only %d steps and never ran its big transaction", wr.steps.Load())
	}
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	// The stream takes a transaction before the new database does.
	testkit.WaitMark(t, tgt, 1, 3*time.Minute, d.alive)
	testkit.Compare(t, src, tgt)
	assertLedgerExactlyOnce(t, tgt, wr.ledger.Load())

	nc, st := srv.Stream(ctx, "TANDEM_FANOUT")
	defer nc.Close()
	msgs, err := natstest.ReadAll(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if err := natstest.CheckHistory(msgs); err != nil {
		t.Fatal(err)
	}
	ops := map[string]int{}
	ledger := map[int64]int{}
	for _, m := range msgs {
		ops[m.M.Op]++
		if m.M.Table == "marker" && m.M.Op == "insert" {
			id, _ := strconv.ParseInt(string(m.M.Key["id"]), 10, 64)
			ledger[id]++
		}
	}
	t.Logf("%d messages: %v", len(msgs), ops)
	for i := int64(0); i < wr.ledger.Load(); i++ {
		if n := ledger[ledgerBase+i]; n != 1 {
			t.Fatalf("ledger row %d was published %d times, want once", ledgerBase+i, n)
		}
	}
	if len(ledger) != int(wr.ledger.Load())+1 { // and the sentinel
		t.Fatalf("%d ledger inserts published, %d written", len(ledger)-1, wr.ledger.Load())
	}
	img := natstest.Apply(msgs)
	plain, err := pgx.Connect(ctx, env.TargetDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close(ctx)
	for _, table := range []string{"public.orders_v2", "public.events_v2", "public.marker"} {
		want, err := natstest.TableImage(ctx, plain, table, []string{"id"})
		if err != nil {
			t.Fatal(err)
		}
		if err := natstest.CompareImage(img[table], want); err != nil {
			t.Errorf("%s as a consumer of the stream sees it differs from the new database: %v", table, err)
		}
	}

	r := tandemCmd(t, "tail", "--config", cfg, "--from-start", "--count", "2", "--table", "marker")
	if r.code != 0 || strings.Count(r.stdout, "public.marker") != 2 {
		t.Errorf("tail: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if code, _ := d.terminate(30 * time.Second); code != 0 {
		t.Errorf("tandem run exited %d after SIGTERM, want 0", code)
	}
	r = tandemCmd(t, "teardown", "--config", cfg)
	if r.code != 0 || !strings.Contains(r.stdout, "left JetStream stream TANDEM_FANOUT") {
		t.Errorf("teardown: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestNATSStreamOnly is a migration whose only target is the stream: no
// new database, the old shape, the stream as the checkpoint. Through
// kill -9s, every ledger row is published once and the image a consumer
// builds equals the old database's tables.
func TestNATSStreamOnly(t *testing.T) {
	kills := 4
	if testing.Short() {
		kills = 2
	}
	ctx := context.Background()
	env := testkit.Setup(t)
	srv := natstest.Start(t)
	src := testkit.Connect(t, env.SourceDSN)
	cfg := writeConfig(t, fmt.Sprintf(`source: {dsn: %q, slot: solo, publication: solo}
backfill: {enabled: false}
apply: {retry_min: 100ms, retry_max: 1s}
nats: {url: %q, create_stream: true, ack_timeout: 2s}
tables:
  - source: public.orders
  - source: public.events
  - source: public.marker
`, env.SourceDSN, srv.URL()))
	if r := tandemCmd(t, "validate", "--config", cfg); r.code != 0 {
		t.Fatalf("validate: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	d := startDaemon(t, cfg)
	waitStreaming(t, src, "solo")
	wr := startWriter(t, env.SourceDSN, 43, 2000)
	for i := 1; i <= kills; i++ {
		time.Sleep(700 * time.Millisecond)
		if err := d.alive(); err != nil {
			t.Fatalf("before kill %d: %v", i, err)
		}
		d.kill()
		d = startDaemon(t, cfg)
	}
	time.Sleep(time.Second)
	if err := wr.finish(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	nc, st := srv.Stream(ctx, "TANDEM_SOLO")
	defer nc.Close()
	var msgs []natstest.Msg
	for deadline := time.Now().Add(2 * time.Minute); ; {
		if err := d.alive(); err != nil {
			t.Fatal(err)
		}
		var err error
		if msgs, err = natstest.ReadAll(ctx, st); err != nil {
			t.Fatal(err)
		}
		if n := len(msgs); n > 0 && msgs[n-1].M.Table == "marker" && string(msgs[n-1].M.Key["id"]) == "1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sentinel was not published within 2 minutes (%d messages)", len(msgs))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := natstest.CheckHistory(msgs); err != nil {
		t.Fatal(err)
	}
	ledger := map[string]int{}
	for _, m := range msgs {
		if m.M.Table == "marker" && m.M.Op == "insert" {
			ledger[string(m.M.Key["id"])]++
		}
	}
	for i := int64(0); i < wr.ledger.Load(); i++ {
		if n := ledger[strconv.FormatInt(ledgerBase+i, 10)]; n != 1 {
			t.Fatalf("ledger row %d was published %d times, want once", ledgerBase+i, n)
		}
	}
	img := natstest.Apply(msgs)
	plain, err := pgx.Connect(ctx, env.SourceDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close(ctx)
	for _, table := range []string{"public.orders", "public.events", "public.marker"} {
		want, err := natstest.TableImage(ctx, plain, table, []string{"id"})
		if err != nil {
			t.Fatal(err)
		}
		// events is REPLICA IDENTITY FULL: its messages are keyed by the
		// whole row, the table here by id.
		got := map[string]map[string]json.RawMessage{}
		for _, row := range img[table] {
			got[natstest.KeyOf(map[string]json.RawMessage{"id": row["id"]})] = row
		}
		if err := natstest.CompareImage(got, want); err != nil {
			t.Errorf("%s as a consumer of the stream sees it differs from the old database: %v", table, err)
		}
	}
	t.Logf("%d messages, %d ledger rows, %d kills", len(msgs), wr.ledger.Load(), kills)
	// The commands that need a new database say why there is none, and
	// none reaches for a default server.
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"status"}, 0, "publishes to NATS only"},
		{[]string{"verify"}, 2, "no new database to verify"},
		{[]string{"cutover", "--dry-run"}, 1, "no new database to cut over to"},
		{[]string{"rollback"}, 1, "no new database to cut over to"},
	} {
		if r := tandemCmd(t, append(c.args, "--config", cfg)...); r.code != c.code || !strings.Contains(r.stdout+r.stderr, c.want) {
			t.Errorf("%v on a stream-only migration: exit %d, want %d with %q\n%s%s", c.args, r.code, c.code, c.want, r.stdout, r.stderr)
		}
	}
	if code, _ := d.terminate(30 * time.Second); code != 0 {
		t.Errorf("tandem run exited %d after SIGTERM, want 0", code)
	}
	r := tandemCmd(t, "teardown", "--config", cfg, "--delete-stream")
	if r.code != 0 || !strings.Contains(r.stdout, "deleted JetStream stream TANDEM_SOLO") {
		t.Errorf("teardown: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
