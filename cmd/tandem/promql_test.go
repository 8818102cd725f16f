package main

import (
	"regexp"
	"sort"
	"strings"
	"testing"
)

// The dashboard and alert tests need the metric names a PromQL expression
// selects. This is a small lexer, not a PromQL parser (that would pull in
// all of Prometheus): it drops what cannot be a metric name and keeps the
// rest. promtool checks the syntax itself (TestPromtoolChecks), and
// TestMetricNames pins down the lexer.

var (
	// Grafana's template variables: $migration, ${migration}, $__rate_interval.
	grafanaVar = regexp.MustCompile(`\$\{?\w+\}?`)
	// String literals, label matchers {...} and ranges [...].
	promStrings  = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	promMatchers = regexp.MustCompile(`\{[^}]*\}`)
	promRanges   = regexp.MustCompile(`\[[^\]]*\]`)
	// Label lists after by, without, on, ignoring, group_left, group_right.
	promGrouping = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	// An identifier, or a number (1, 0.5, 1e3, 0x1f, 5m) so that its tail
	// is not taken for one.
	promToken = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*|[0-9.][0-9A-Za-z_.]*`)
)

// promKeywords are identifiers that are not metric names when they are not
// followed by "(" (functions and aggregations always are).
var promKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "atan2": true, "bool": true, "offset": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"inf": true, "nan": true, "Inf": true, "NaN": true,
	"sum": true, "avg": true, "min": true, "max": true, "count": true, "group": true, "stddev": true,
	"stdvar": true, "topk": true, "bottomk": true, "quantile": true, "count_values": true,
	"limitk": true, "limit_ratio": true,
}

// metricNames returns the metric names expr selects, sorted and unique.
func metricNames(expr string) []string {
	s := grafanaVar.ReplaceAllString(expr, " ")
	s = promStrings.ReplaceAllString(s, " ")
	s = promMatchers.ReplaceAllString(s, " ")
	s = promRanges.ReplaceAllString(s, " ")
	s = promGrouping.ReplaceAllString(s, " ")
	seen := map[string]bool{}
	for _, loc := range promToken.FindAllStringIndex(s, -1) {
		tok := s[loc[0]:loc[1]]
		if c := tok[0]; c >= '0' && c <= '9' || c == '.' {
			continue // a number
		}
		if promKeywords[tok] || strings.HasPrefix(strings.TrimLeft(s[loc[1]:], " \t\n"), "(") {
			continue // a keyword, a function or an aggregation
		}
		seen[tok] = true
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// labelValues matches Grafana's label_values(metric, label) and
// label_values(label) variable queries.
var labelValues = regexp.MustCompile(`^\s*label_values\((.*?)(?:,\s*\w+\s*)?\)\s*$`)
var queryResult = regexp.MustCompile(`^\s*query_result\((.*)\)\s*$`)

// variableExpr returns the PromQL inside a Grafana template variable's
// query, or "" when it selects no metric (label_values(label)).
func variableExpr(query string) string {
	if m := queryResult.FindStringSubmatch(query); m != nil {
		return m[1]
	}
	if m := labelValues.FindStringSubmatch(query); m != nil {
		if strings.Contains(query, ",") {
			return m[1]
		}
		return "" // label_values(label): a label name, no metric
	}
	return query
}

func TestMetricNames(t *testing.T) {
	tests := []struct {
		expr string
		want string // names joined by spaces
	}{
		{`tandem_replication_lag_seconds > 60`, "tandem_replication_lag_seconds"},
		{`up{job="tandem"} == 0`, "up"},
		{`tandem_slot_retained_wal_bytes > 20 * 1024 * 1024 * 1024`, "tandem_slot_retained_wal_bytes"},
		{`increase(tandem_apply_errors_total[10m]) > 3`, "tandem_apply_errors_total"},
		{`changes(tandem_checkpoint_lsn[15m]) == 0 and tandem_replication_lag_bytes > 0`, "tandem_checkpoint_lsn tandem_replication_lag_bytes"},
		{`sum by (migration, table, op) (rate(tandem_changes_applied_total{migration=~"$migration"}[$__rate_interval]))`, "tandem_changes_applied_total"},
		{`histogram_quantile(0.99, sum by (migration, le) (rate(tandem_target_commit_seconds_bucket{migration=~"$migration"}[5m])))`, "tandem_target_commit_seconds_bucket"},
		{`sum without (instance) (a_total) / on (job) group_left (version) b_info`, "a_total b_info"},
		{`max(x offset 1h) unless y @ 1609746000 or z @ start()`, "x y z"},
		{`rate(x[5m:30s]) > bool 1e3`, "x"},
		{`{__name__="hidden_by_matcher"} or visible`, "visible"},
		{`label_replace(m, "dst", "$1", "src", "(by|on) (.*)")`, "m"},
		{`clamp_max(100 * a / (b > 0), 100) or vector(0) > Inf`, "a b"},
		{`count_values("version", tandem_build_info)`, "tandem_build_info"},
		{`topk (3, sum by (table) (x))`, "x"},
		{`a:recorded:rate5m > 0x1f`, "a:recorded:rate5m"},
		{`sum(rate(x[$__rate_interval])) / ${divisor}`, "x"},
	}
	for _, tt := range tests {
		if got := strings.Join(metricNames(tt.expr), " "); got != tt.want {
			t.Errorf("metricNames(%s) = %q, want %q", tt.expr, got, tt.want)
		}
	}
}

func TestVariableExpr(t *testing.T) {
	for query, want := range map[string]string{
		"label_values(tandem_build_info, migration)":             "tandem_build_info",
		`label_values(tandem_build_info{job="tandem"}, version)`: `tandem_build_info{job="tandem"}`,
		"label_values(migration)":                                "",
		"query_result(topk(5, tandem_replication_lag_bytes))":    "topk(5, tandem_replication_lag_bytes)",
	} {
		if got := variableExpr(query); got != want {
			t.Errorf("variableExpr(%q) = %q, want %q", query, got, want)
		}
	}
}
