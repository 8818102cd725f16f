package status

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// lagMetric is the daemon's own measure of how old the oldest unapplied
// change is. The databases cannot say it: the checkpoint holds a WAL
// position, not the commit time of what it covers.
const lagMetric = "tandem_replication_lag_seconds"

// daemonLagSeconds reads lagMetric from the metrics endpoint of the
// `tandem run` on this host (metrics.listen); ok is false when it does not
// answer quickly (not running, elsewhere, or metrics off).
func daemonLagSeconds(ctx context.Context, listen string) (secs float64, ok bool) {
	if listen == "" {
		return 0, false
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return 0, false
	}
	// A wildcard listen address is reached on loopback.
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/metrics", nil)
	if err != nil {
		return 0, false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, false
	}
	return parseGauge(bufio.NewScanner(resp.Body), lagMetric)
}

// parseGauge finds name in the Prometheus text format and returns the
// largest of its samples (one per label set, should it gain labels).
func parseGauge(sc *bufio.Scanner, name string) (v float64, ok bool) {
	for sc.Scan() {
		line := sc.Text()
		rest, found := strings.CutPrefix(line, name)
		if !found || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		if i := strings.LastIndexByte(rest, '}'); i >= 0 {
			rest = rest[i+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		x, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		if !ok || x > v {
			v, ok = x, true
		}
	}
	return v, ok
}
