package backfill

import (
	"slices"
	"testing"

	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

func TestParseSnapshot(t *testing.T) {
	tests := []struct {
		in      string
		want    Snapshot
		wantErr bool
	}{
		{in: "100:100:", want: Snapshot{Xmin: 100, Xmax: 100}},
		{in: "100:120:105,101", want: Snapshot{Xmin: 100, Xmax: 120, Xip: []uint64{101, 105}}},
		{in: "4294967396:4294967400:4294967397", want: Snapshot{Xmin: 4294967396, Xmax: 4294967400, Xip: []uint64{4294967397}}},
		{in: "100:120", wantErr: true},
		{in: "x:120:", wantErr: true},
		{in: "100:120:1,y", wantErr: true},
		{in: "130:120:", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseSnapshot(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseSnapshot(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if !tt.wantErr && (got.Xmin != tt.want.Xmin || got.Xmax != tt.want.Xmax || !slices.Equal(got.Xip, tt.want.Xip)) {
			t.Errorf("ParseSnapshot(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestSnapshotVisible(t *testing.T) {
	tests := []struct {
		name string
		snap string
		xid  uint32
		want bool
	}{
		{"finished before xmin", "100:120:105", 99, true},
		{"between xmin and xmax, not running", "100:120:105", 110, true},
		{"running", "100:120:105", 105, false},
		{"xmin itself is running", "100:120:100", 100, false},
		{"at xmax: not yet finished when taken", "100:120:", 120, false},
		{"after xmax", "100:120:", 4000, false},
		// In epoch 1 the 32-bit xid 4294967290 is the previous epoch's,
		// well below xmin; 3 is this epoch's and running.
		{"previous epoch", "4294967298:4294967310:4294967299", 4294967290, true},
		{"this epoch, running", "4294967298:4294967310:4294967299", 3, false},
		{"this epoch, visible", "4294967298:4294967310:4294967299", 5, true},
		{"epoch 0, far below xmax", "3000000000:3000000010:", 900000000, true},
		{"near the next wrap", "4294967200:4294967300:4294967250", 10, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ParseSnapshot(tt.snap)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Visible(tt.xid); got != tt.want {
				t.Fatalf("Visible(%d) in %s = %v, want %v", tt.xid, tt.snap, got, tt.want)
			}
		})
	}
}

// TestTrackerUnseen walks what a chunk must check its read against: the
// transactions the applier processed before its registration, minus those
// an earlier snapshot has shown.
func TestTrackerUnseen(t *testing.T) {
	rel := &change.Relation{Schema: "public", Name: "t", Columns: []change.Column{{Name: "id", Key: true}, {Name: "v"}}}
	other := &change.Relation{Schema: "public", Name: "other", Columns: rel.Columns}
	job := &Job{Mapping: &transform.Mapping{SourceName: "public.t"}, keyIdx: []int{0}, rowKeyIdx: []int{0}}
	del := func(r *change.Relation, xid uint32, id string) *change.Change {
		return &change.Change{Op: change.Delete, XID: xid, Rel: r, Old: []change.Value{text(id), {Kind: change.Null}}}
	}
	snap := func(s string) Snapshot {
		v, err := ParseSnapshot(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name    string
		watch   []string // nil: the runner has not declared its tables
		before  []*change.Change
		observe []string // snapshots seen before the registration
		read    string   // the chunk read's snapshot
		want    []uint32 // left unseen by the read
	}{
		{name: "nothing processed", read: "100:100:"},
		{name: "processed and visible", before: []*change.Change{del(rel, 101, "1")}, read: "100:110:"},
		{name: "processed, still running in the read's snapshot", before: []*change.Change{del(rel, 101, "1"), del(rel, 102, "2")},
			read: "101:110:101", want: []uint32{101}},
		{name: "processed, not yet finished when the read began", before: []*change.Change{del(rel, 101, "1")},
			read: "100:101:", want: []uint32{101}},
		{name: "other tables do not hold a chunk back", before: []*change.Change{del(other, 101, "1")}, read: "100:101:"},
		{name: "shown by an earlier snapshot, so by the read's too", before: []*change.Change{del(rel, 101, "1")},
			observe: []string{"100:110:"}, read: "100:101:"},
		{name: "an earlier snapshot that did not show it keeps it", before: []*change.Change{del(rel, 101, "1")},
			observe: []string{"100:110:101"}, read: "101:110:101", want: []uint32{101}},
		{name: "a table being copied is logged", watch: []string{"public.t"}, before: []*change.Change{del(rel, 101, "1")},
			read: "101:110:101", want: []uint32{101}},
		{name: "TRUNCATE is logged for its tables", before: []*change.Change{{Op: change.Truncate, XID: 101, Truncated: []*change.Relation{other, rel}}},
			read: "101:110:101", want: []uint32{101}},
		{name: "unknown xid is not logged", before: []*change.Change{del(rel, 0, "1")}, read: "100:101:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := NewTracker()
			tr.SetKeys("public.t", []int{0})
			tr.SetKeys("public.other", []int{0})
			if tt.watch != nil {
				tr.watch(tt.watch)
			}
			for _, c := range tt.before {
				tr.TouchChange(c)
			}
			for _, s := range tt.observe {
				tr.observe(snap(s))
			}
			c := &Chunk{ID: "c", Job: job, Source: "public.t"}
			tr.register(c)
			// Processed after the registration: the window's business, not
			// the read's.
			tr.TouchChange(del(rel, 150, "9"))
			if got := c.unseenBy(snap(tt.read)); !slices.Equal(got, tt.want) {
				t.Fatalf("unseen after the read = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestTrackerLogBounded(t *testing.T) {
	rel := &change.Relation{Schema: "public", Name: "t"}
	other := &change.Relation{Schema: "public", Name: "other"}
	ch := func(r *change.Relation, xid uint32) *change.Change {
		return &change.Change{Op: change.Insert, XID: xid, Rel: r, New: []change.Value{text("1")}}
	}
	tr := NewTracker()
	tr.SetKeys("public.t", []int{0})
	tr.SetKeys("public.other", []int{0})
	tr.TouchChange(ch(other, 3))
	tr.watch([]string{"public.t", "public.t"}) // two jobs copy public.t
	if n := tr.logged(); n != 0 {
		t.Fatalf("a table no job copies is still logged: %d xids", n)
	}
	for x := uint32(10); x < 5000; x++ {
		tr.TouchChange(ch(rel, x))
		tr.TouchChange(ch(rel, x)) // a transaction's second change
		tr.TouchChange(ch(other, x))
	}
	if n := tr.logged(); n != 4990 {
		t.Fatalf("logged %d xids, want one per transaction of the copied table (4990)", n)
	}
	tr.observe(Snapshot{Xmin: 4990, Xmax: 5000, Xip: []uint64{4995}})
	if n := tr.logged(); n != 1 {
		t.Fatalf("after a snapshot showing all but one, %d xids logged", n)
	}
	if l := tr.logs["public.t"]; cap(l.xids) > 1024 {
		t.Fatalf("the pruned log keeps a backing array of %d", cap(l.xids))
	}
	tr.unwatch("public.t")
	tr.TouchChange(ch(rel, 6000))
	if n := tr.logged(); n != 2 {
		t.Fatalf("one of two jobs done: %d xids logged, want 2", n)
	}
	tr.unwatch("public.t")
	tr.TouchChange(ch(rel, 6001))
	if n := tr.logged(); n != 0 || tr.logging() {
		t.Fatalf("every job done: %d xids logged, logging %v", n, tr.logging())
	}
}

func TestGuardParam(t *testing.T) {
	tests := []struct {
		name   string
		unseen []uint32
		ref    uint64
		want   string
	}{
		{"nothing unseen", nil, 500, "{}"},
		{"no snapshot seen yet: no guard", []uint32{7}, 0, "{}"},
		{"same epoch", []uint32{490, 505}, 500, "{490,505}"},
		{"epoch 1, one of them from the end of epoch 0", []uint32{4294967290, 3}, 1<<32 + 10, "{4294967290,4294967299}"},
	}
	for _, tt := range tests {
		if got := string(guardParam(tt.unseen, tt.ref)); got != tt.want {
			t.Errorf("%s: guardParam(%v, %d) = %s, want %s", tt.name, tt.unseen, tt.ref, got, tt.want)
		}
	}
}
