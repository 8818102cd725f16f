package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

var httpClient = &http.Client{Timeout: 2 * time.Second}

// sample is one line of the Prometheus text format.
type sample struct {
	labels map[string]string
	value  float64
}

// metrics holds the samples of each metric by name.
type metrics map[string][]sample

// sum adds a metric up over its labels; 0 when absent.
func (m metrics) sum(name string) float64 {
	var v float64
	for _, s := range m[name] {
		v += s.value
	}
	return v
}

// by returns a metric's values keyed by one of its labels.
func (m metrics) by(name, label string) map[string]float64 {
	out := map[string]float64{}
	for _, s := range m[name] {
		out[s.labels[label]] += s.value
	}
	return out
}

// direction keeps the samples of one stream direction ("forward" or
// "reverse"): tandem labels every stream metric with the direction it
// belongs to, and both directions export the same names. Samples without
// the label (the phase, the process's own) are kept.
func (m metrics) direction(dir string) metrics {
	out := metrics{}
	for name, samples := range m {
		for _, s := range samples {
			if d, ok := s.labels["direction"]; !ok || d == dir {
				out[name] = append(out[name], s)
			}
		}
	}
	return out
}

// phase is the migration's phase as tandem_phase shows it (the label
// whose value is 1), or "" when tandem does not export it.
func (m metrics) phase() string {
	for _, s := range m["tandem_phase"] {
		if s.value == 1 {
			return s.labels["phase"]
		}
	}
	return ""
}

// scrape reads tandem's metrics endpoint.
func scrape(addr string) (metrics, error) {
	resp, err := httpClient.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

// parseMetrics reads the Prometheus text format, which is simple enough not
// to need a parser library. Label values may hold spaces (tandem's table
// label is "public.orders -> public.orders_v2"), so a line is not split
// at its first space.
func parseMetrics(r io.Reader) (metrics, error) {
	out := metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if name, s, ok := parseSample(line); ok {
			out[name] = append(out[name], s)
		}
	}
	return out, sc.Err()
}

// parseSample parses `name{label="value",...} value [timestamp]`.
func parseSample(line string) (string, sample, bool) {
	s := sample{labels: map[string]string{}}
	end := strings.IndexAny(line, "{ ")
	if end <= 0 {
		return "", s, false
	}
	name, rest := line[:end], line[end:]
	if rest[0] == '{' {
		rest = rest[1:]
		for {
			rest = strings.TrimLeft(rest, " ,")
			if strings.HasPrefix(rest, "}") {
				rest = rest[1:]
				break
			}
			eq := strings.IndexByte(rest, '=')
			if eq <= 0 || len(rest) < eq+2 || rest[eq+1] != '"' {
				return "", s, false
			}
			key := strings.TrimSpace(rest[:eq])
			rest = rest[eq+2:]
			var val strings.Builder
			closed := false
			for i := 0; i < len(rest); i++ {
				c := rest[i]
				if c == '\\' && i+1 < len(rest) {
					i++
					switch rest[i] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(rest[i])
					}
					continue
				}
				if c == '"' {
					rest, closed = rest[i+1:], true
					break
				}
				val.WriteByte(c)
			}
			if !closed {
				return "", s, false
			}
			s.labels[key] = val.String()
		}
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return "", s, false
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return "", s, false
	}
	s.value = v
	return name, s, true
}

// backfillState is the backfill as the demo sees it on the metrics
// endpoint, by table label ("public.orders -> public.orders_v2").
type backfillState struct {
	rows, estimated, done map[string]float64
	// started is when the estimates first appeared (the backfill begins),
	// finished when every table reported done.
	started, finished time.Time
}

func (b *backfillState) complete() bool { return !b.finished.IsZero() }

// update reads the backfill metrics; it reports whether every table is
// copied.
func (b *backfillState) update(m metrics) bool {
	if b.complete() {
		return true
	}
	// Only the forward stream copies history; the reverse one streams.
	m = m.direction("forward")
	est := m.by("tandem_backfill_estimated_rows", "table")
	if len(est) == 0 {
		return false // not started yet
	}
	if b.started.IsZero() {
		b.started = time.Now()
	}
	b.estimated, b.rows, b.done = est, m.by("tandem_backfill_rows_total", "table"), m.by("tandem_backfill_done", "table")
	for t := range est {
		if b.done[t] != 1 {
			return false
		}
	}
	b.finished = time.Now()
	return true
}

func (b *backfillState) tables() []string {
	var ts []string
	for t := range b.estimated {
		ts = append(ts, t)
	}
	sort.Strings(ts)
	return ts
}

// shortName turns "public.orders -> public.orders_v2" into "orders".
func shortName(label string) string {
	src, _, _ := strings.Cut(label, " -> ")
	return strings.TrimPrefix(src, "public.")
}

// progress is "customers done, orders 42%": rows copied as a share of the
// estimate (pg_class.reltuples), held below 100 until the table is done.
func (b *backfillState) progress() string {
	if b.started.IsZero() {
		return "starting"
	}
	var parts []string
	for _, t := range b.tables() {
		switch est := b.estimated[t]; {
		case b.done[t] == 1:
			parts = append(parts, shortName(t)+" done")
		case est > 0:
			parts = append(parts, fmt.Sprintf("%s %.0f%%", shortName(t), min(99, 100*b.rows[t]/est)))
		default:
			parts = append(parts, fmt.Sprintf("%s %.0f rows", shortName(t), b.rows[t]))
		}
	}
	return strings.Join(parts, ", ")
}

func (b *backfillState) copied() (total float64, each string) {
	var parts []string
	for _, t := range b.tables() {
		total += b.rows[t]
		parts = append(parts, fmt.Sprintf("%s %.0f", shortName(t), b.rows[t]))
	}
	return total, strings.Join(parts, ", ")
}

// report is the summary's line on the backfill.
func (b *backfillState) report() string {
	if !b.complete() {
		return "not complete: " + b.progress()
	}
	took := b.finished.Sub(b.started)
	total, each := b.copied()
	return fmt.Sprintf("copied %.0f historic rows (%s) in %.1fs, %.0f rows/s, while the stream ran; a row the writer changed during its chunk's copy came from the stream instead",
		total, each, took.Seconds(), total/took.Seconds())
}

// watchBackfill refreshes d.bf and prints a line the moment the backfill
// completes; it reports whether it has.
func (d *demo) watchBackfill() bool {
	if d.bf.complete() {
		return true
	}
	m, err := scrape(d.metrics)
	if err != nil {
		return false
	}
	if !d.bf.update(m) {
		return false
	}
	total, each := d.bf.copied()
	took := d.bf.finished.Sub(d.bf.started)
	fmt.Printf("%5s  backfill complete: %.0f rows copied (%s) in %.1fs, %.0f rows/s; from here on only the stream moves rows\n",
		d.elapsed(), total, each, took.Seconds(), total/took.Seconds())
	return true
}

// waitBackfill waits for the backfill to complete, printing its progress,
// when the demo is stopped before it has.
func (d *demo) waitBackfill(ctx context.Context, timeout time.Duration) bool {
	if d.watchBackfill() {
		return true
	}
	fmt.Printf("waiting for the backfill to complete before comparing (%s)\n", d.bf.progress())
	deadline := time.Now().Add(timeout)
	lastPrint := time.Now()
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return false
		case <-d.exited:
			return false
		case <-time.After(250 * time.Millisecond):
		}
		if d.watchBackfill() {
			return true
		}
		if time.Since(lastPrint) >= 2*time.Second {
			fmt.Printf("%5s  backfill %s\n", d.elapsed(), d.bf.progress())
			lastPrint = time.Now()
		}
	}
	return false
}
