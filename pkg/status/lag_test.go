package status

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestParseGauge(t *testing.T) {
	text := `# HELP tandem_replication_lag_seconds Age...
# TYPE tandem_replication_lag_seconds gauge
tandem_replication_lag_seconds_total 99
tandem_replication_lag_seconds 1.5
tandem_replication_lag_seconds{side="x"} 2.25
tandem_replication_lag_bytes 4096
`
	v, ok := parseGauge(bufio.NewScanner(strings.NewReader(text)), lagMetric)
	if !ok || v != 2.25 {
		t.Fatalf("got %v %v, want 2.25", v, ok)
	}
	if _, ok := parseGauge(bufio.NewScanner(strings.NewReader("other 1\n")), lagMetric); ok {
		t.Fatal("found a metric that is not there")
	}
}

// TestDaemonLagSeconds: a wildcard metrics.listen is read on loopback; a
// daemon that is not there gives no value rather than an error.
func TestDaemonLagSeconds(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "tandem_replication_lag_seconds 3")
	}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	if v, ok := daemonLagSeconds(context.Background(), "0.0.0.0:"+port); !ok || v != 3 {
		t.Fatalf("got %v %v, want 3", v, ok)
	}
	srv.Close()
	if _, ok := daemonLagSeconds(context.Background(), "127.0.0.1:"+port); ok {
		t.Fatal("a value from a closed endpoint")
	}
	if _, ok := daemonLagSeconds(context.Background(), ""); ok {
		t.Fatal("a value with metrics off")
	}
}
