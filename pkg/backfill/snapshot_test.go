package backfill

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/pgcluster"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

func TestParseSnapshot(t *testing.T) {
	tests := []struct {
		in   string
		want snapshot
		bad  bool
	}{
		{"100:105:101,103", snapshot{105, []uint32{101, 103}}, false},
		{"100:100:", snapshot{100, nil}, false},
		{"4294967397:4294967400:4294967398", snapshot{104, []uint32{102}}, false}, // epoch 1
		{"garbage", snapshot{}, true},
		{"1:2:x", snapshot{}, true},
	}
	for _, tt := range tests {
		got, err := parseSnapshot(tt.in)
		if tt.bad {
			if err == nil {
				t.Fatalf("parseSnapshot(%q) accepted garbage: %+v", tt.in, got)
			}
			continue
		}
		if err != nil || got.xmax != tt.want.xmax || fmt.Sprint(got.xip) != fmt.Sprint(tt.want.xip) {
			t.Fatalf("parseSnapshot(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestMissedStreamed(t *testing.T) {
	tr := NewTracker()
	if tr.missedStreamed(snapshot{xmax: 10}) {
		t.Fatal("nothing streamed yet, but a miss reported")
	}
	for x := uint32(1); x <= streamedKeep+10; x++ {
		tr.Streamed(x)
	}
	snap := func(xmax uint32, xip ...uint32) snapshot { return snapshot{xmax: xmax, xip: xip} }
	tests := []struct {
		name string
		snap snapshot
		want bool
	}{
		{"all streamed visible", snap(streamedKeep + 11), false},
		{"newest at or past xmax", snap(streamedKeep + 10), true},
		{"streamed XID in progress", snap(streamedKeep+11, 999), true},
		{"in-progress XID never streamed", snap(streamedKeep+11, streamedKeep+20), false},
		{"in-progress XID forgotten by the ring", snap(streamedKeep+11, 5), false},
	}
	for _, tt := range tests {
		if got := tr.missedStreamed(tt.snap); got != tt.want {
			t.Errorf("%s: missedStreamed = %v, want %v", tt.name, got, tt.want)
		}
	}
	wrapped := NewTracker()
	wrapped.Streamed(0xfffffff0)
	wrapped.Streamed(3) // after wraparound: newer
	if !wrapped.missedStreamed(snap(2)) || wrapped.missedStreamed(snap(4)) {
		t.Fatal("XID order across wraparound")
	}
}

// TestReadWaitsForStreamedCommit plays the stalled commit against a real
// server: a transaction the stream already delivered is still in progress
// for the chunk read's snapshot. The read must not return rows until that
// transaction is visible, so its delete is not undone.
func TestReadWaitsForStreamedCommit(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	ctx := context.Background()
	c := pgcluster.ForTest(t, pgcluster.Options{Name: "snap"})
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM generate_series(1, 10) g`); err != nil {
		t.Fatal(err)
	}
	tbl, err := catalog.Load(ctx, conn, "public", "t")
	if err != nil {
		t.Fatal(err)
	}
	m, err := transform.Compile("tables[0]", config.TableConfig{Source: "public.t", Target: "public.t"}, transform.SourceFromCatalog(tbl), 'd', tbl)
	if err != nil {
		t.Fatal(err)
	}
	j, err := NewJob("tables[0]", tbl, m, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The "stalled" transaction: it deletes id 5 and stays open; the
	// tracker is told the stream delivered it.
	stalled, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close(ctx)
	tx, err := stalled.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var xid uint64
	if err := tx.QueryRow(ctx, `DELETE FROM t WHERE id = 5 RETURNING pg_current_xact_id()::text::int8`).Scan(&xid); err != nil {
		t.Fatal(err)
	}
	r := &Runner{Name: "snap", Control: NewControl(Limits{ChunkRows: 100, ChunkBytes: 1 << 20}), Tracker: NewTracker(),
		Metrics: NewMetrics(prometheus.NewRegistry()), Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	r.Tracker.Streamed(uint32(xid))
	committed := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		committed <- tx.Commit(ctx)
	}()
	rc, err := connect(ctx, c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close(ctx)
	ch, err := r.readChunk(ctx, rc, j, nil, []string{"10"}, 100)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-committed:
		if err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatal("the read returned before the streamed transaction committed")
	}
	got := r.Tracker.chunks[ch.ID]
	for _, row := range got.Rows {
		if string(row[0]) == "5" {
			t.Fatal("the chunk holds row 5, which the streamed transaction deleted")
		}
	}
	if len(got.Rows) != 9 {
		t.Fatalf("%d rows, want 9", len(got.Rows))
	}
}
