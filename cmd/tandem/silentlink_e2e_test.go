package main

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tandem-migrate/tandem/internal/testkit"
)

// TestSilentLinks puts a proxy between tandem and each database and makes
// each link silent for 20 s while the old database takes writes: no reset,
// no FIN, bytes simply stop. tandem must notice by itself (the replication
// stream after source.receive_timeout, the new database after
// apply.statement_timeout), report the outage truthfully (not streaming,
// lag growing, not ready, still live), recover when the link comes back,
// and end with every change applied exactly once. A plain reset of both
// links afterwards must be retried from the smallest backoff.
func TestSilentLinks(t *testing.T) {
	const slot = "silent"
	const outage = 20 * time.Second
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)
	installLedger(t, tgt)
	srcProxy := testkit.NewProxy(t, testkit.ProxyTarget(env.Source.Port()))
	tgtProxy := testkit.NewProxy(t, testkit.ProxyTarget(env.Target.Port()))
	proxied := &testkit.Env{SourceDSN: srcProxy.Rewrite(env.SourceDSN), TargetDSN: tgtProxy.Rewrite(env.TargetDSN)}
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", closedPort(t))
	yaml := proxied.YAML(slot, fmt.Sprintf("metrics: {listen: %q}\n", metricsAddr))
	// Small bounds so the test is quick, and a backoff that can grow
	// high enough to tell a reset one from a grown one.
	yaml = strings.Replace(yaml, "publication: silent}", "publication: silent, receive_timeout: 3s}", 1)
	yaml = strings.Replace(yaml, "apply: {retry_min: 100ms, retry_max: 1s}", "apply: {retry_min: 100ms, retry_max: 8s, statement_timeout: 3s}", 1)
	cfg := writeConfig(t, yaml)

	d := startDaemon(t, cfg)
	waitStreaming(t, src, slot)
	w := startWriter(t, env.SourceDSN, 23, 0)
	waitMetric(t, d, metricsAddr, "tandem_streaming", func(v float64) bool { return v == 1 }, time.Minute)

	for _, side := range []struct {
		name  string
		proxy *testkit.Proxy
		// what must be true while the link is silent, once noticed
		lagBytes bool
	}{
		// The old database cannot be read: lag grows from the last contact.
		{"old database", srcProxy, false},
		// The old database is readable: lag grows with its WAL too.
		{"new database", tgtProxy, true},
	} {
		time.Sleep(2 * time.Second) // some changes in flight
		began := time.Now()
		side.proxy.Blackhole(true)
		detected := waitMetric(t, d, metricsAddr, "tandem_streaming", func(v float64) bool { return v == 0 }, outage-2*time.Second)
		t.Logf("%s link silent: noticed after %s", side.name, detected.Sub(began).Round(100*time.Millisecond))
		time.Sleep(time.Until(began.Add(outage - 3*time.Second)))
		m := scrape(t, metricsAddr)
		if lag := m["tandem_replication_lag_seconds"]; lag < 10 {
			t.Errorf("%s silent for %s: tandem_replication_lag_seconds %v, want it to keep growing", side.name, time.Since(began).Round(time.Second), lag)
		}
		if side.lagBytes && m["tandem_replication_lag_bytes"] <= 0 {
			t.Errorf("%s silent while the old database takes writes: tandem_replication_lag_bytes %v, want > 0", side.name, m["tandem_replication_lag_bytes"])
		}
		if code := probe(t, metricsAddr, "/healthz"); code != http.StatusServiceUnavailable {
			t.Errorf("%s silent: /healthz %d, want 503 (not ready)", side.name, code)
		}
		if code := probe(t, metricsAddr, "/livez"); code != http.StatusOK {
			t.Errorf("%s silent: /livez %d, want 200 (retrying by itself is alive)", side.name, code)
		}
		time.Sleep(time.Until(began.Add(outage)))
		side.proxy.Blackhole(false)
		restored := time.Now()
		back := waitMetric(t, d, metricsAddr, "tandem_streaming", func(v float64) bool { return v == 1 }, 2*time.Minute)
		t.Logf("%s link back: streaming again after %s", side.name, back.Sub(restored).Round(100*time.Millisecond))
		if err := d.alive(); err != nil {
			t.Fatal(err)
		}
	}

	// Let the stream apply something, then cut both links at once.
	if err := testkit.Mark(context.Background(), src, 2); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 2, time.Minute, d.alive)
	logBefore := len(d.log())
	reconnects := scrape(t, metricsAddr)["tandem_reconnects_total"]
	cut := time.Now()
	srcProxy.Reset()
	tgtProxy.Reset()
	back := waitReconnected(t, d, metricsAddr, reconnects, time.Minute)
	t.Logf("both links reset: streaming again after %s", back.Sub(cut).Round(100*time.Millisecond))
	retry := regexp.MustCompile(`stream interrupted.*retry_in=(\S+)`).FindStringSubmatch(d.log()[logBefore:])
	if retry == nil {
		t.Errorf("no retry logged after the reset; log tail:\n%s", tail(d.log(), 20))
	} else if retry[1] != "100ms" {
		t.Errorf("first retry after a reset waits %s, want apply.retry_min (100ms): the backoff must start small again once reconnected", retry[1])
	}

	// A session the daemon gave up on during a silent spell may still be
	// alive on the server when the link returns; it is ended, not waited
	// for, before the checkpoint is read again.
	t.Logf("earlier sessions ended after the links came back: %d apply, %d lock",
		strings.Count(d.log(), "ending an earlier apply session"), strings.Count(d.log(), "previous lock session"))

	if err := w.finish(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	if err := testkit.Mark(context.Background(), src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, 2*time.Minute, d.alive)
	testkit.Compare(t, src, tgt)
	assertLedgerExactlyOnce(t, tgt, w.ledger.Load())
	if code, _ := d.terminate(30 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// waitMetric polls the daemon's metrics until ok(value) and returns when
// that was first seen.
func waitMetric(t *testing.T, d *daemon, addr, name string, ok func(float64) bool, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if v, found := scrape(t, addr)[name]; found && ok(v) {
			return time.Now()
		}
		if err := d.alive(); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not as expected within %s (now %v); log tail:\n%s", name, timeout, scrape(t, addr)[name], tail(d.log(), 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitReconnected waits until tandem has reconnected since the reconnect
// counter read before and streams again, and returns when it was seen: a
// reset may be noticed and recovered from between two scrapes.
func waitReconnected(t *testing.T, d *daemon, addr string, before float64, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		m := scrape(t, addr)
		if m["tandem_reconnects_total"] > before && m["tandem_streaming"] == 1 {
			return time.Now()
		}
		if err := d.alive(); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("not streaming again within %s; log tail:\n%s", timeout, tail(d.log(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func probe(t *testing.T, addr, path string) int {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
