package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tandem-migrate/tandem/internal/testkit"
)

// TestLifecycle drives a migration through its whole life under a random
// workload: backfill and stream, cutover while the applications write
// (their writes on the old database are refused by the fence, then they
// write to the new one, drawing keys from its sequences), rollback, and
// writes on the old database again. tandem run and the ceremonies are
// killed with SIGKILL at random points of every stage. At each stage both
// databases must agree through the mapping by an independent SQL
// comparison; at the end every application insert must have been applied
// on the other side exactly once (no loss, no duplicate, no echo), and no
// insert may have collided on a sequence-drawn key (the workload stops on
// any such error).
func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	const customers, orders = 300, 4000
	env := testkit.SetupLife(t, customers, orders)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", closedPort(t))
	cfg := writeConfig(t, env.YAML("life", `backfill: {enabled: true, chunk_rows: 400, rows_per_second: 3000}
cutover: {max_lag: 10s, verify: changed, timeout: 1m}
metrics: {listen: `+metricsAddr+`}
`))
	// The fences end every application session, the test's own included:
	// each check opens fresh ones.
	conns := func() (*pgx.Conn, *pgx.Conn) { return testkit.Connect(t, env.OldDSN), testkit.Connect(t, env.NewDSN) }
	r := rand.New(rand.NewSource(time.Now().UnixNano()))
	kills := 0
	d := startDaemon(t, cfg)
	restart := func(stage string) {
		t.Helper()
		if err := d.alive(); err != nil {
			t.Fatal(err)
		}
		d.kill()
		kills++
		t.Logf("%s: kill -9 of tandem run (#%d)", stage, kills)
		d = startDaemon(t, cfg)
	}

	w := testkit.NewLifeWorkload(env, r.Int63(), customers, orders)
	stop := make(chan struct{})
	wrote := make(chan error, 1)
	go func() { wrote <- w.Run(ctx, stop) }()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
	}()
	checkWorkload := func() {
		t.Helper()
		select {
		case err := <-wrote:
			t.Fatalf("workload stopped: %v", err)
		default:
		}
	}
	agree := func(stage string) {
		t.Helper()
		w.Pause()
		defer w.Resume()
		checkWorkload()
		old, new := conns()
		defer old.Close(ctx)
		defer new.Close(ctx)
		deadline := time.Now().Add(time.Minute)
		for {
			diffs := testkit.LifeDiffs(t, old, new)
			if len(diffs) == 0 {
				t.Logf("%s: both databases agree", stage)
				return
			}
			if err := d.alive(); err != nil {
				t.Fatal(err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the databases still differ after a minute:\n%s", stage, strings.Join(diffs, "\n"))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	// Stage 1: backfill and stream, with kills mid-copy.
	waitTableCopied(t, env.NewDSN, "life", "public.events", d.alive)
	w.EventsOn()
	for i := 0; i < 4; i++ {
		time.Sleep(time.Duration(600+r.Intn(900)) * time.Millisecond)
		checkWorkload()
		restart("backfill and stream")
	}
	testkit.WaitBackfill(t, testkit.Connect(t, env.NewDSN), "life", 3, 3*time.Minute, d.alive)
	agree("stream")
	if res := tandemCmd(t, "verify", "--config", cfg); res.code != 0 {
		t.Fatalf("verify: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}

	// Stage 2: cutover while the applications write on the old database;
	// the ceremony is killed mid-way and run again until it is done.
	time.Sleep(500 * time.Millisecond)
	ready := ceremonyUntilDone(t, r, "cutover", cfg, &kills, func() {
		time.Sleep(time.Duration(r.Intn(150)) * time.Millisecond)
		restart("cutover")
	})
	if !strings.Contains(ready, "new database ready") {
		t.Fatalf("cutover did not declare the new database ready:\n%s", ready)
	}
	assertReadOnly(t, env.OldDSN, "INSERT INTO customers (name) VALUES ('after the fence')")
	w.Switch(testkit.NewSide)
	agree("cutover")

	// Stage 3: the applications write on the new schema; tandem streams
	// back through the inverse mapping.
	for i := 0; i < 3; i++ {
		time.Sleep(time.Duration(700+r.Intn(800)) * time.Millisecond)
		checkWorkload()
		restart("reverse stream")
	}
	time.Sleep(time.Second)
	agree("reverse stream")
	if w.Steps[testkit.NewSide].Load() == 0 {
		t.Fatal("no write reached the new database after cutover")
	}
	// The daemon shows the phase, the last switch's window, the reverse
	// lag, and the reverse stream's writes on the old database skipped as
	// echoes by the forward stream.
	m := seriesOf(t, metricsAddr)
	for _, want := range []string{`tandem_phase{phase="cutover"}`, `tandem_streaming{direction="reverse"}`, `tandem_streaming{direction="forward"}`} {
		if m[want] != 1 {
			t.Errorf("after cutover %s = %v, want 1", want, m[want])
		}
	}
	if m["tandem_cutover_write_unavailable_seconds"] <= 0 {
		t.Errorf("tandem_cutover_write_unavailable_seconds = %v after a cutover", m["tandem_cutover_write_unavailable_seconds"])
	}
	if _, ok := m[`tandem_replication_lag_seconds{direction="reverse"}`]; !ok {
		t.Errorf("no reverse lag series")
	}
	echoes := 0.0
	for k, v := range m {
		if strings.HasPrefix(k, "tandem_changes_skipped_total{") && strings.Contains(k, `direction="forward"`) && strings.Contains(k, `reason="echo"`) {
			echoes += v
		}
	}
	if echoes == 0 {
		t.Errorf("the forward stream skipped no echo of the reverse stream's writes")
	}

	// Stage 4: rollback while the applications write on the new database.
	back := ceremonyUntilDone(t, r, "rollback", cfg, &kills, func() {
		time.Sleep(time.Duration(r.Intn(150)) * time.Millisecond)
		restart("rollback")
	})
	if !strings.Contains(back, "point the applications at the old database") {
		t.Fatalf("rollback did not hand the writes back:\n%s", back)
	}
	assertReadOnly(t, env.NewDSN, "INSERT INTO customers (full_name) VALUES ('after the fence')")
	w.Switch(testkit.OldSide)
	agree("rollback")

	// Stage 5: writes on the old database again, forward streaming resumed.
	for i := 0; i < 2; i++ {
		time.Sleep(time.Duration(700+r.Intn(800)) * time.Millisecond)
		checkWorkload()
		restart("forward again")
	}
	time.Sleep(time.Second)
	close(stop)
	if err := <-wrote; err != nil {
		t.Fatalf("workload: %v", err)
	}
	agree("end")
	old, new := conns()
	fromOld, fromNew, err := testkit.EventLedger(ctx, old, new)
	if err != nil {
		t.Fatal(err)
	}
	if fromOld == 0 || fromNew == 0 {
		t.Fatalf("the ledger proves nothing: %d events inserted on the old database, %d on the new", fromOld, fromNew)
	}
	if kills < 10 {
		t.Fatalf("only %d kill -9 in all; the test promises at least 10", kills)
	}
	t.Logf("%d kill -9; events inserted on old %d, on new %d, each applied once on the other side; writes refused by fences: old %d, new %d",
		kills, fromOld, fromNew, w.Refused[testkit.OldSide].Load(), w.Refused[testkit.NewSide].Load())
	if st := tandemCmd(t, "status", "--config", cfg); !strings.Contains(st.stdout, "phase forward") || !strings.Contains(st.stdout, "new database fenced") {
		t.Errorf("status after rollback:\n%s", st.stdout)
	}
	if m := seriesOf(t, metricsAddr); m[`tandem_phase{phase="forward"}`] != 1 || m[`tandem_streaming{direction="reverse"}`] != 0 {
		t.Errorf("after rollback: phase forward %v, reverse streaming %v", m[`tandem_phase{phase="forward"}`], m[`tandem_streaming{direction="reverse"}`])
	}

	// Teardown leaves nothing behind: no slot on either side, no fence.
	d.kill()
	res := tandemCmd(t, "teardown", "--config", cfg)
	if res.code != 0 {
		t.Fatalf("teardown: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	if !strings.Contains(res.stdout, "lifted the fence on the new database") {
		t.Errorf("teardown did not lift the new database's fence:\n%s", res.stdout)
	}
	for _, dsn := range []string{env.OldDSN, env.NewDSN} {
		c := testkit.Connect(t, dsn)
		if n := queryInt(t, c, `SELECT count(*) FROM pg_replication_slots`); n != 0 {
			t.Errorf("%d slot(s) left after teardown", n)
		}
		if n := queryInt(t, c, `SELECT count(*) FROM pg_db_role_setting WHERE 'default_transaction_read_only=on' = ANY(setconfig)`); n != 0 {
			t.Errorf("a fence is left after teardown")
		}
	}
}

// seriesOf reads the metrics endpoint: each series (name and labels,
// without the migration label) with its value.
func seriesOf(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	drop := regexp.MustCompile(`,?migration="[^"]*",?`)
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		name := strings.Replace(drop.ReplaceAllString(line[:i], ""), "{}", "", 1)
		out[name] = v
	}
	return out
}

// ceremonyUntilDone runs `tandem verb`, killing the first two runs with
// SIGKILL at a random moment, then runs it until it exits 0. during runs
// while the last run is in flight, to disturb something else meanwhile.
// It returns the output of the run that finished.
func ceremonyUntilDone(t *testing.T, r *rand.Rand, verb, cfg string, kills *int, during func()) string {
	t.Helper()
	for attempt := 0; attempt < 8; attempt++ {
		cmd := exec.Command(tandemBin, verb, "--config", cfg)
		cmd.Env = childEnv()
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		if attempt < 2 {
			select {
			case err := <-done:
				t.Logf("%s finished before its kill (%v):\n%s", verb, err, out.String())
				if err == nil {
					return out.String()
				}
				continue
			case <-time.After(time.Duration(10+r.Intn(250)) * time.Millisecond):
			}
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-done
			*kills++
			t.Logf("%s: kill -9 of the ceremony (#%d) after:\n%s", verb, *kills, out.String())
			continue
		}
		if during != nil && attempt == 2 {
			during()
		}
		select {
		case err := <-done:
			if err == nil {
				t.Logf("%s:\n%s", verb, out.String())
				return out.String()
			}
			var exit *exec.ExitError
			if !errors.As(err, &exit) {
				t.Fatal(err)
			}
			t.Logf("%s exited %d, running it again:\n%s", verb, exit.ExitCode(), out.String())
		case <-time.After(3 * time.Minute):
			_ = cmd.Process.Kill()
			t.Fatalf("%s did not finish within 3 minutes:\n%s", verb, out.String())
		}
	}
	t.Fatalf("%s never finished", verb)
	return ""
}

// assertReadOnly checks that a new application session cannot write.
func assertReadOnly(t *testing.T, dsn, sql string) {
	t.Helper()
	c, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	_, err = c.Exec(context.Background(), sql)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		t.Fatalf("a write by a new application session after the fence: got %v, want read-only refusal (25006)", err)
	}
}
