package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-migrate/tandem/internal/testkit"
)

// TestFaultProxies puts a TCP proxy between tandem and each database (the
// config names only the proxies) and attacks both links while tandem
// copies history under a random workload, then again while it only
// streams: every connection reset at once, several times, and each link
// made silent (bytes dropped, sockets left open) for 20 s. Detection
// bounds are set small in the config (source.receive_timeout,
// apply.statement_timeout, connect_timeout in the DSNs: 5 s each), so a
// 20 s silence must be noticed while it lasts. The same `tandem run`
// process must recover by itself every time and end with every row equal
// (an independent comparison) and every ledger row applied exactly once.
//
// One 20 s silence per database per phase (four in all), not two: eight
// would add almost three minutes to a suite that runs on 2 shared cores.
// With -short, one per database in all: the old database's link goes
// silent during the copy, the new one's during the stream.
func TestFaultProxies(t *testing.T) {
	const (
		slot   = "faulty"
		outage = 20 * time.Second
		bound  = "5s"
	)
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	rows, rate := 20000, 1000
	w := testkit.NewWorkload(src, 41)
	if err := testkit.Seed(ctx, src, w, rows); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Exec(ctx, "ANALYZE orders"); err != nil {
		t.Fatal(err)
	}
	installLedger(t, tgt)

	srcProxy := testkit.NewProxy(t, testkit.ProxyTarget(env.Source.Port()))
	tgtProxy := testkit.NewProxy(t, testkit.ProxyTarget(env.Target.Port()))
	proxied := &testkit.Env{
		SourceDSN: srcProxy.Rewrite(env.SourceDSN) + "&connect_timeout=5",
		TargetDSN: tgtProxy.Rewrite(env.TargetDSN) + "&connect_timeout=5",
	}
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", closedPort(t))
	yamlAt := func(rowsPerSecond int) string {
		y := proxied.YAMLWithBackfill(slot, fmt.Sprintf("{enabled: true, chunk_rows: 1000, workers: 2, rows_per_second: %d}", rowsPerSecond),
			fmt.Sprintf("metrics: {listen: %q}\n", metricsAddr))
		y = faultReplace(t, y, "publication: "+slot+"}", "publication: "+slot+", receive_timeout: "+bound+"}")
		return faultReplace(t, y, "apply: {retry_min: 100ms, retry_max: 1s}", "apply: {retry_min: 100ms, retry_max: 2s, statement_timeout: "+bound+"}")
	}
	cfg := writeConfig(t, yamlAt(rate))

	began := time.Now()
	d := startDaemon(t, cfg)
	// Ledger rows start once the (empty) marker table's copy is done, so
	// that only the stream writes them (see TestTargetCrashAsyncCommit).
	waitTableCopied(t, env.TargetDSN, slot, "public.marker", d.alive)
	wr := startWriterAt(t, env.SourceDSN, 42, 0, 10*int64(rows))
	stop := make(chan struct{})
	churned := make(chan error, 1)
	go func() {
		churned <- w.Churn(ctx, testkit.Connect(t, env.SourceDSN), 43, rows, 10*time.Millisecond, stop)
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
			<-churned
		}
	}()
	waitMetric(t, d, metricsAddr, "tandem_streaming", func(v float64) bool { return v == 1 }, time.Minute)

	// copying fails the test once the copy is over: the faults of the
	// first phase must land mid-copy.
	copying := func(what string) {
		t.Helper()
		if n := testkit.BackfillCopied(ctx, tgt, "public.orders"); n >= int64(rows) {
			t.Fatalf("the backfill finished (%d rows) before %s; slow it down", n, what)
		} else {
			t.Logf("%s with %d/%d rows copied, %d writer steps", what, n, rows, wr.steps.Load())
		}
	}
	reset := func(phase string, proxies ...*testkit.Proxy) {
		t.Helper()
		time.Sleep(time.Second) // some changes and chunks in flight
		if phase == "backfill" {
			copying("reset")
		}
		before := scrape(t, metricsAddr)["tandem_reconnects_total"]
		cut := time.Now()
		for _, p := range proxies {
			p.Reset()
		}
		back := waitReconnected(t, d, metricsAddr, before, 2*time.Minute)
		t.Logf("%s: %d link(s) reset: streaming again after %s", phase, len(proxies), back.Sub(cut).Round(100*time.Millisecond))
	}
	silence := func(phase, side string, p *testkit.Proxy) {
		t.Helper()
		time.Sleep(2 * time.Second)
		if phase == "backfill" {
			copying(side + " link silent")
		}
		cut := time.Now()
		p.Blackhole(true)
		noticed := waitMetric(t, d, metricsAddr, "tandem_streaming", func(v float64) bool { return v == 0 }, outage)
		t.Logf("%s: %s link silent: noticed after %s", phase, side, noticed.Sub(cut).Round(100*time.Millisecond))
		for time.Now().Before(cut.Add(outage)) {
			if err := d.alive(); err != nil {
				t.Fatalf("while the %s link is silent: %v", side, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
		p.Blackhole(false)
		restored := time.Now()
		back := waitMetric(t, d, metricsAddr, "tandem_streaming", func(v float64) bool { return v == 1 }, 2*time.Minute)
		t.Logf("%s: %s link back: streaming again after %s", phase, side, back.Sub(restored).Round(100*time.Millisecond))
	}

	// Phase 1: while the backfill copies.
	reset("backfill", srcProxy, tgtProxy)
	silence("backfill", "old database", srcProxy)
	reset("backfill", tgtProxy)
	if !testing.Short() {
		silence("backfill", "new database", tgtProxy)
		reset("backfill", srcProxy)
	}
	copying("end of the backfill phase")

	// Lift the rate (SIGHUP applies backfill limits) and let the copy end.
	if err := os.WriteFile(cfg, []byte(yamlAt(0)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testkit.WaitBackfill(t, tgt, slot, 3, 3*time.Minute, d.alive)
	t.Logf("backfill done after %s", time.Since(began).Round(time.Second))
	// The churn was for the copy; the ledger writer goes on.
	close(stop)
	if err := <-churned; err != nil {
		t.Fatalf("churn: %v", err)
	}

	// Phase 2: the stream alone.
	reset("stream", srcProxy, tgtProxy)
	if !testing.Short() {
		silence("stream", "old database", srcProxy)
		reset("stream", tgtProxy)
	}
	silence("stream", "new database", tgtProxy)
	reset("stream", srcProxy, tgtProxy)

	if err := wr.finish(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, 3*time.Minute, d.alive)
	testkit.Compare(t, src, tgt)
	assertLedgerExactlyOnce(t, tgt, wr.ledger.Load())
	m := scrape(t, metricsAddr)
	t.Logf("%d writer steps, %d ledger rows; %v reconnects, %v apply errors; %s in all",
		wr.steps.Load(), wr.ledger.Load(), m["tandem_reconnects_total"], m["tandem_apply_errors_total"], time.Since(began).Round(time.Second))
	// One slot for the whole run: every recovery resumed it.
	if n := strings.Count(d.log(), "created replication slot"); n != 1 {
		t.Errorf("the log says %d times that the slot was created, want once", n)
	}
	if code, _ := d.terminate(30 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// faultReplace replaces old by new in s exactly once, failing the test if
// old is missing (the config helper changed its output).
func faultReplace(t *testing.T, s, old, new string) string {
	t.Helper()
	if strings.Count(s, old) != 1 {
		t.Fatalf("config template does not contain %q exactly once:\n%s", old, s)
	}
	return strings.Replace(s, old, new, 1)
}
