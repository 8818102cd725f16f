package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"

	"github.com/tandem-migrate/tandem/pkg/config"
)

// The Grafana dashboard and the alert rules in deploy/ name metrics by
// string; these tests keep those names true to what tandem defines, so a
// renamed or removed metric fails here instead of leaving a blank panel or
// an alert that can never fire.

const (
	dashboardPath = "../../deploy/grafana/tandem-dashboard.json"
	alertsPath    = "../../deploy/tandem-alerts.yml"
)

// scrapeSeries are the series Prometheus itself adds to every target.
var scrapeSeries = map[string]bool{"up": true}

// knownMetrics is every metric the daemon's registry defines: the names
// its collectors describe (a CounterVec with no series yet is not on
// /metrics but is described) and, for those already exposed, their type.
type knownMetrics struct {
	names map[string]bool
	types map[string]dto.MetricType
}

var descName = regexp.MustCompile(`^Desc\{fqName: "([^"]+)"`)

func daemonMetrics(t *testing.T) knownMetrics {
	t.Helper()
	cfg := &config.Config{
		Source: config.SourceConfig{DSN: "postgres://u@h/old", Slot: "m", Publication: "m"},
		Target: config.TargetConfig{DSN: "postgres://u@h/new"},
		Tables: []config.TableConfig{{Source: "public.a"}},
		// Everything on, so every optional part registers its metrics.
		Verify: config.VerifyConfig{Continuous: true},
	}
	cfg.ApplyDefaults()
	e, err := newEngine(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	k := knownMetrics{names: map[string]bool{}, types: map[string]dto.MetricType{}}
	descs := make(chan *prometheus.Desc)
	go func() {
		e.reg.Describe(descs)
		close(descs)
	}()
	for d := range descs {
		m := descName.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("cannot read a metric name from %s", d)
		}
		k.names[m[1]] = true
	}
	families, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		k.names[f.GetName()] = true
		k.types[f.GetName()] = f.GetType()
	}
	return k
}

// has reports whether name is a series tandem serves: a metric it defines,
// or a histogram's (or summary's) _bucket, _sum or _count series.
func (k knownMetrics) has(name string) bool {
	if k.names[name] || scrapeSeries[name] {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok || !k.names[base] {
			continue
		}
		switch typ, seen := k.types[base]; {
		case !seen:
			return true // a Vec without series yet: its type is unknown here
		case typ == dto.MetricType_HISTOGRAM:
			return true
		case typ == dto.MetricType_SUMMARY && suffix != "_bucket":
			return true
		}
	}
	return false
}

// TestKnownMetrics: the check itself refuses what tandem does not define,
// so the tests below cannot pass by accepting everything.
func TestKnownMetrics(t *testing.T) {
	k := daemonMetrics(t)
	for name, want := range map[string]bool{
		"tandem_replication_lag_bytes":        true,
		"tandem_changes_applied_total":        true, // a CounterVec with no series yet
		"tandem_verify_mismatches_total":      true, // registered only with verify.continuous
		"tandem_target_commit_seconds_bucket": true,
		"tandem_target_commit_seconds_count":  true,
		"tandem_build_info":                   true,
		"process_resident_memory_bytes":       true,
		"up":                                  true,
		"tandem_no_such_metric":               false,
		"tandem_replication_lag_bytes_bucket": false, // a gauge has no buckets
		"tandem_replication_lag":              false,
	} {
		if got := k.has(name); got != want {
			t.Errorf("has(%s) = %v, want %v", name, got, want)
		}
	}
}

// dashboardQuery is one PromQL expression of the dashboard.
type dashboardQuery struct {
	where, expr string
}

func dashboardQueries(t *testing.T) []dashboardQuery {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	var qs []dashboardQuery
	var walk func(raw json.RawMessage)
	walk = func(raw json.RawMessage) {
		var p struct {
			Title   string            `json:"title"`
			Panels  []json.RawMessage `json:"panels"` // a collapsed row's panels
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			t.Fatalf("%s: panel: %v", dashboardPath, err)
		}
		for i, tg := range p.Targets {
			qs = append(qs, dashboardQuery{fmt.Sprintf("panel %q target %d", p.Title, i), tg.Expr})
		}
		for _, c := range p.Panels {
			walk(c)
		}
	}
	for _, p := range dash.Panels {
		walk(p)
	}
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(string)
		if m, ok := v.Query.(map[string]any); ok {
			q, _ = m["query"].(string)
		}
		if e := variableExpr(q); e != "" {
			qs = append(qs, dashboardQuery{"variable " + v.Name, e})
		}
	}
	return qs
}

type alertRule struct {
	where, expr string
}

func alertRules(t *testing.T) []alertRule {
	t.Helper()
	b, err := os.ReadFile(alertsPath)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert  string `yaml:"alert"`
				Record string `yaml:"record"`
				Expr   string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", alertsPath, err)
	}
	var rules []alertRule
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			rules = append(rules, alertRule{fmt.Sprintf("group %s rule %s%s", g.Name, r.Alert, r.Record), r.Expr})
		}
	}
	return rules
}

// checkNames fails for an expression that selects no metric (the lexer
// would then be checking nothing) and for every name tandem does not
// serve; it returns the names seen.
func checkNames(t *testing.T, k knownMetrics, file, where, expr string) []string {
	t.Helper()
	names := metricNames(expr)
	if len(names) == 0 {
		t.Errorf("%s, %s: found no metric name in %q", file, where, expr)
	}
	for _, n := range names {
		if !k.has(n) {
			t.Errorf("%s, %s: %s is not a metric tandem defines (expression %q)", file, where, n, expr)
		}
	}
	return names
}

// dashboardMustShow are the metrics an operator watches a migration by.
var dashboardMustShow = []string{
	"tandem_replication_lag_seconds", "tandem_replication_lag_bytes",
	"tandem_changes_applied_total", "tandem_apply_errors_total", "tandem_reconnects_total",
	"tandem_backfill_rows_total", "tandem_backfill_estimated_rows", "tandem_backfill_done",
	"tandem_slot_retained_wal_bytes", "tandem_checkpoint_lsn", "tandem_build_info",
}

func TestDashboardMetricsExist(t *testing.T) {
	k := daemonMetrics(t)
	qs := dashboardQueries(t)
	if len(qs) < 10 {
		t.Fatalf("%s: only %d queries found; is the file what the test expects?", dashboardPath, len(qs))
	}
	shown := map[string]bool{}
	for _, q := range qs {
		for _, n := range checkNames(t, k, dashboardPath, q.where, q.expr) {
			shown[n] = true
		}
	}
	var missing []string
	for _, n := range dashboardMustShow {
		if !shown[n] {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		t.Errorf("%s shows no panel for %s", dashboardPath, strings.Join(missing, ", "))
	}
}

func TestAlertRulesMetricsExist(t *testing.T) {
	k := daemonMetrics(t)
	rules := alertRules(t)
	if len(rules) == 0 {
		t.Fatalf("%s: no rules found", alertsPath)
	}
	for _, r := range rules {
		checkNames(t, k, alertsPath, r.where, r.expr)
	}
}

// TestPromtoolChecks runs promtool over the alert rules, and over the
// dashboard's queries as recording rules, so their PromQL is checked by
// Prometheus' own parser.
func TestPromtoolChecks(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not found on PATH: the Prometheus rule checks are skipped (.ci/run installs it as root; Debian/Ubuntu: apt-get install prometheus)")
	}
	if out, err := exec.Command(promtool, "check", "rules", alertsPath).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules %s: %v\n%s", alertsPath, err, out)
	}

	// Grafana fills these in before Prometheus sees the query.
	vars := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h", "$migration", ".*", "${migration}", ".*")
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	qs := dashboardQueries(t)
	for i, q := range qs {
		rules = append(rules, rule{Record: fmt.Sprintf("dashboard_query_%d", i), Expr: vars.Replace(q.expr)})
	}
	b, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput(); err != nil {
		var where []string
		for i, q := range qs {
			where = append(where, fmt.Sprintf("dashboard_query_%d: %s", i, q.where))
		}
		t.Errorf("promtool check rules on %s's queries: %v\n%s\n%s", dashboardPath, err, out, strings.Join(where, "\n"))
	}
}
