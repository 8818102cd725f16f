package metrics

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestLiveness(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name  string
		setup func(l *Liveness) // beats happen at now unless backdated
		want  string            // "" when live; else a substring of the error
	}{
		{"nothing joined yet", func(*Liveness) {}, ""},
		{"a loop that beats", func(l *Liveness) { l.Join("decoder") }, ""},
		{"a loop stuck past the bound", func(l *Liveness) {
			b := l.Join("applier")
			b.last.Store(now.Add(-11 * time.Minute).UnixNano())
		}, "applier made no progress for 11m0s"},
		{"a stuck loop that left (its attempt ended) does not count", func(l *Liveness) {
			b := l.Join("applier")
			b.last.Store(now.Add(-time.Hour).UnixNano())
			b.Leave()
			l.Join("pipeline")
		}, ""},
		{"a shorter bound", func(l *Liveness) {
			l.SetStale(time.Minute)
			b := l.Join("pipeline")
			b.last.Store(now.Add(-2 * time.Minute).UnixNano())
		}, "pipeline made no progress for 2m0s (bound 1m0s)"},
		{"one stuck among live ones", func(l *Liveness) {
			l.Join("decoder")
			b := l.Join("applier")
			b.last.Store(now.Add(-20 * time.Minute).UnixNano())
		}, "applier"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var l Liveness
			tt.setup(&l)
			err := l.Check(now)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("stuck: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("got %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
}

func TestProbes(t *testing.T) {
	var h Health
	get := func(path string) (int, string) {
		mux := http.NewServeMux()
		mux.Handle("/livez", &h.Live)
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if ok, reason := h.Ready(); !ok {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write([]byte(reason))
			}
		})
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	// Retrying an outage: not ready, but live.
	h.Set(false, "connect to source database: connection refused")
	b := h.Live.Join("pipeline")
	if code, _ := get("/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("/healthz %d while retrying, want 503", code)
	}
	if code, body := get("/livez"); code != http.StatusOK {
		t.Errorf("/livez %d while retrying (%s), want 200", code, body)
	}
	// Streaming but far behind: not ready.
	h.Set(true, "")
	h.SetBehind("streaming but 10m behind")
	if code, body := get("/healthz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "behind") {
		t.Errorf("/healthz %d %q while far behind, want 503 saying so", code, body)
	}
	h.SetBehind("")
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz %d while streaming and caught up, want 200", code)
	}
	// Stuck: not live.
	b.last.Store(time.Now().Add(-time.Hour).UnixNano())
	if code, body := get("/livez"); code != http.StatusServiceUnavailable || !strings.Contains(body, "pipeline") {
		t.Errorf("/livez %d %q with a stuck loop, want 503 naming it", code, body)
	}
}
