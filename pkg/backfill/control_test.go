package backfill

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestControlHandler: POST /backfill changes the limits it names and
// refuses values that would stop the copy for good, leaving the limits
// as they were.
func TestControlHandler(t *testing.T) {
	start := Limits{ChunkRows: 20000, ChunkBytes: 32 << 20, RowsPerSecond: 100}
	tests := []struct {
		query  string
		status int
		want   Limits
	}{
		{"chunk_bytes=2048&chunk_rows=10", http.StatusOK, Limits{ChunkRows: 10, ChunkBytes: 2048, RowsPerSecond: 100}},
		{"rows_per_second=0&pause", http.StatusOK, Limits{ChunkRows: 20000, ChunkBytes: 32 << 20, Paused: true}},
		{"chunk_bytes=0", http.StatusBadRequest, start},
		{"chunk_rows=0", http.StatusBadRequest, start},
		{"chunk_bytes=lots", http.StatusBadRequest, start},
		{"bytes_per_second=-1", http.StatusBadRequest, start},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			c := NewControl(start)
			rec := httptest.NewRecorder()
			c.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/backfill?"+tt.query, nil))
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.status, rec.Body)
			}
			if got := c.Limits(); got != tt.want {
				t.Fatalf("limits %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestLimiterStartsEmpty: a resume or a limit change must not let a
// whole burst through above the cap at once.
func TestLimiterStartsEmpty(t *testing.T) {
	c := NewControl(Limits{ChunkRows: 100, ChunkBytes: 1 << 20, RowsPerSecond: 1000})
	c.SetPaused(true)
	c.SetPaused(false)
	start := time.Now()
	if err := c.spend(context.Background(), 500, 0); err != nil {
		t.Fatal(err)
	}
	// 500 rows at 1000 rows/s: about half a second, not at once.
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Fatalf("500 rows passed in %s right after a resume, want about 500ms at 1000 rows/s", d)
	}
}
