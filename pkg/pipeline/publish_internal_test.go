package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/sink"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

// fakeStream records what the publisher publishes.
type fakeStream struct {
	place  sink.Place
	placed bool
	out    []sink.Out
}

var _ streamSink = (*fakeStream)(nil)

func (f *fakeStream) Resume(context.Context) (sink.Place, bool, error) { return f.place, f.placed, nil }
func (f *fakeStream) Publish(_ context.Context, o sink.Out) error {
	f.out = append(f.out, o)
	return nil
}
func (f *fakeStream) Flush(context.Context) (change.LSN, error) { return 0, nil }
func (f *fakeStream) Sent() uint64                              { return uint64(len(f.out)) }
func (f *fakeStream) Poll(context.Context) (uint64, error)      { return uint64(len(f.out)), nil }
func (f *fakeStream) Close()                                    {}

// TestPublisherPlaces feeds transactions through a publisher in the old
// shape and checks what reaches the stream: positions, the last mark, and
// what a resume place skips.
func TestPublisherPlaces(t *testing.T) {
	rel := &change.Relation{OID: 1, Schema: "public", Name: "t", ReplicaIdentity: 'd',
		Columns: []change.Column{{Name: "id", TypeOID: 20, Key: true}, {Name: "v", TypeOID: 25}}}
	ins := func(id int) *change.Change {
		return &change.Change{Op: change.Insert, Rel: rel, New: []change.Value{
			{Kind: change.Text, Data: []byte(fmt.Sprint(id))}, {Kind: change.Text, Data: []byte("x")}}}
	}
	// Three transactions: 100 with 3 inserts, 200 with 1, 300 with 2.
	txs := []struct {
		commit change.LSN
		n      int
	}{{100, 3}, {200, 1}, {300, 2}}
	tests := []struct {
		name   string
		place  *sink.Place
		want   string // commit#seq, * on the last of a transaction
		partly bool   // transaction 200 comes back without its change (a backfill chunk not read again)
	}{
		{"from an empty stream", nil, "100#0 100#1 100#2* 200#0* 300#0 300#1*", false},
		{"after a whole transaction", &sink.Place{CommitLSN: 100, Seq: 2, Last: true}, "200#0* 300#0 300#1*", false},
		{"inside a transaction", &sink.Place{CommitLSN: 100, Seq: 0}, "100#1 100#2* 200#0* 300#0 300#1*", false},
		{"a cut transaction with nothing more to send", &sink.Place{CommitLSN: 200, Seq: 0}, "200#1*(commit) 300#0 300#1*", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			cfg := &config.Config{Name: "m", NATS: config.NATSConfig{URL: "nats://x:4222", Subject: "tandem.m", Shape: "old"}}
			fs := &fakeStream{}
			if tt.place != nil {
				fs.place, fs.placed = *tt.place, true
			}
			pub := newPublisher(cfg, slog.New(slog.DiscardHandler), fs, nil)
			if err := pub.resume(ctx, 0); err != nil {
				t.Fatal(err)
			}
			byOID := map[uint32][]*transform.Mapping{1: inMigration}
			id := 0
			for _, tx := range txs {
				at := time.Unix(1700000000, 0)
				if err := pub.observe(ctx, &change.Begin{XID: 7, FinalLSN: tx.commit, CommitTime: at}); err != nil {
					t.Fatal(err)
				}
				n := tx.n
				if tt.partly && tx.commit == 200 {
					n = 0
				}
				for i := 0; i < n; i++ {
					id++
					if err := pub.change(ctx, ins(id), byOID); err != nil {
						t.Fatal(err)
					}
				}
				if err := pub.observe(ctx, &change.Commit{LSN: tx.commit, EndLSN: tx.commit + 8, CommitTime: at}); err != nil {
					t.Fatal(err)
				}
			}
			if err := pub.durable(ctx); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, o := range fs.out {
				s := fmt.Sprintf("%d#%d", o.CommitLSN, o.Seq)
				if o.Last {
					s += "*"
					if o.EndLSN != o.CommitLSN+8 {
						t.Errorf("%s: end LSN %d", s, o.EndLSN)
					}
				}
				var m sink.Message
				if err := json.Unmarshal(o.Data, &m); err != nil {
					t.Fatal(err)
				}
				if m.Op == sink.OpCommit {
					s += "(commit)"
				} else if m.Op != "insert" || string(m.Key["id"]) == "" || string(m.After["v"]) != `"x"` || m.Seq != o.Seq {
					t.Errorf("%s: body %s", s, o.Data)
				}
				got = append(got, s)
			}
			if g := strings.Join(got, " "); g != tt.want {
				t.Fatalf("published %s, want %s", g, tt.want)
			}
		})
	}
}

// TestOldShape renders changes of a REPLICA IDENTITY DEFAULT table as the
// old database sent them: the key, an update that moved it, a value not
// sent.
func TestOldShape(t *testing.T) {
	rel := &change.Relation{OID: 1, Schema: "public", Name: "t", ReplicaIdentity: 'd',
		Columns: []change.Column{{Name: "id", TypeOID: 20, Key: true}, {Name: "big", TypeOID: 25}, {Name: "n", TypeOID: 1700}}}
	types := []uint32{20, 25, 1700}
	v := func(s string) change.Value { return change.Value{Kind: change.Text, Data: []byte(s)} }
	tests := []struct {
		name string
		c    *change.Change
		want string
	}{
		{"insert", &change.Change{Op: change.Insert, Rel: rel, New: []change.Value{v("1"), v("b"), {Kind: change.Null}}},
			`{"op":"insert","schema":"public","table":"t","key":{"id":1},"after":{"id":1,"big":"b","n":null}`},
		{"update moving the key, big not sent", &change.Change{Op: change.Update, Rel: rel,
			New: []change.Value{v("2"), {Kind: change.Unchanged}, v("1.50")}, Old: []change.Value{v("1"), {Kind: change.Null}, {Kind: change.Null}}},
			`{"op":"update","schema":"public","table":"t","key":{"id":2},"old_key":{"id":1},"after":{"id":2,"n":1.50},"unchanged":["big"]`},
		{"delete", &change.Change{Op: change.Delete, Rel: rel, Old: []change.Value{v("2"), {Kind: change.Null}, {Kind: change.Null}}},
			`{"op":"delete","schema":"public","table":"t","key":{"id":2}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := oldShape(tt.c, types)
			if got := string(ev.AppendJSON(nil)); !strings.HasPrefix(got, tt.want+`,"lsn"`) {
				t.Fatalf("got  %s\nwant %s,...", got, tt.want)
			}
		})
	}
}
