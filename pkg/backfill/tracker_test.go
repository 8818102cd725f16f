package backfill

import (
	"testing"

	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

func text(s string) change.Value { return change.Value{Kind: change.Text, Data: []byte(s)} }

// TestTrackerWindows walks the cases one by one: which chunk rows survive
// to the high watermark depends only on what the stream changed after the
// chunk was registered.
func TestTrackerWindows(t *testing.T) {
	rel := &change.Relation{Schema: "public", Name: "t", Columns: []change.Column{{Name: "id", Key: true}, {Name: "v"}}}
	job := &Job{Mapping: &transform.Mapping{SourceName: "public.t"}, keyIdx: []int{0}, rowKeyIdx: []int{0}}
	rows := func(ids ...string) [][][]byte {
		var out [][][]byte
		for _, id := range ids {
			out = append(out, [][]byte{[]byte(id), []byte("v" + id)})
		}
		return out
	}
	ids := func(c *Chunk) []string {
		var out []string
		for _, r := range c.Rows {
			out = append(out, string(r[0]))
		}
		return out
	}
	ins := func(id string) *change.Change {
		return &change.Change{Op: change.Insert, Rel: rel, New: []change.Value{text(id), text("x")}}
	}
	del := func(id string) *change.Change {
		return &change.Change{Op: change.Delete, Rel: rel, Old: []change.Value{text(id), {Kind: change.Null}}}
	}
	keyMove := func(from, to string) *change.Change {
		return &change.Change{Op: change.Update, Rel: rel, New: []change.Value{text(to), text("x")}, Old: []change.Value{text(from), {Kind: change.Null}}}
	}
	other := &change.Relation{Schema: "public", Name: "other", Columns: rel.Columns}

	tests := []struct {
		name   string
		before []*change.Change // processed before the registration
		during []*change.Change // processed between the registration and the high watermark
		want   []string
	}{
		{"no concurrent change", nil, nil, []string{"1", "2", "3"}},
		{"change processed before the registration is older than the read", []*change.Change{ins("2"), del("3")}, nil, []string{"1", "2", "3"}},
		// Even when its commit precedes everything the worker wrote: its
		// transaction may have become visible only after the read.
		{"change processed after the registration: the stream decides", nil, []*change.Change{ins("2")}, []string{"1", "3"}},
		{"delete during the window is not resurrected", nil, []*change.Change{del("3")}, []string{"1", "2"}},
		{"key change drops both keys", nil, []*change.Change{keyMove("1", "9")}, []string{"2", "3"}},
		{"other tables do not matter", nil, []*change.Change{{Op: change.Insert, Rel: other, New: []change.Value{text("1"), text("x")}}}, []string{"1", "2", "3"}},
		{"truncate during the window drops everything", nil, []*change.Change{{Op: change.Truncate, Truncated: []*change.Relation{rel}}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := NewTracker()
			tr.SetKeys("public.t", []int{0})
			for _, ch := range tt.before {
				tr.TouchChange(ch)
			}
			tr.register(&Chunk{ID: "c1", Job: job, Source: "public.t"})
			tr.setRows("c1", &chunkRows{rows: rows("1", "2", "3")}, []string{"3"}, false)
			for _, ch := range tt.during {
				tr.TouchChange(ch)
			}
			got := tr.High("c1")
			if got == nil {
				t.Fatal("High returned nil for a registered chunk")
			}
			if g := ids(got); !equal(g, tt.want) {
				t.Fatalf("rows kept = %v, want %v", g, tt.want)
			}
			if tr.Open() {
				t.Fatal("chunk still open after its high watermark")
			}
		})
	}

	// A binary chunk keeps its rows as one COPY body; the rows the stream
	// touched must leave the body too, and exactly their bytes.
	t.Run("binary body loses exactly the touched rows", func(t *testing.T) {
		bin := &Job{Mapping: &transform.Mapping{SourceName: "public.t", Source: []transform.SourceColumn{{Name: "id"}, {Name: "v"}}},
			keyIdx: []int{0}, rowKeyIdx: []int{0}, binary: true, textSrc: []int{0}}
		read := func(ids ...string) *chunkRows {
			r := &chunkRows{}
			for _, id := range ids {
				var v []byte // NULL for id 2
				if id != "2" {
					v = []byte("value of " + id)
				}
				r.add(bin, [][]byte{[]byte("bin" + id), v, []byte(id)})
			}
			return r
		}
		tr := NewTracker()
		tr.SetKeys("public.t", []int{0})
		tr.register(&Chunk{ID: "b", Job: bin, Source: "public.t"})
		tr.setRows("b", read("1", "2", "3", "4"), []string{"4"}, false)
		tr.TouchChange(del("2"))
		tr.TouchChange(ins("4"))
		got := tr.High("b")
		if g := ids(got); !equal(g, []string{"1", "3"}) {
			t.Fatalf("rows kept = %v, want [1 3]", g)
		}
		if want := read("1", "3").body; string(got.Body) != string(want) {
			t.Fatalf("body after drop:\n got %q\nwant %q", got.Body, want)
		}
	})

	t.Run("watermarks of another process are ignored", func(t *testing.T) {
		tr := NewTracker()
		if tr.High("unknown") != nil || tr.Open() {
			t.Fatal("unknown watermark was tracked")
		}
	})
	t.Run("the watermark of a chunk whose read failed is ignored", func(t *testing.T) {
		tr := NewTracker()
		tr.register(&Chunk{ID: "c", Job: job, Source: "public.t"})
		tr.forget("c")
		if tr.High("c") != nil || tr.Open() {
			t.Fatal("a forgotten chunk was applied or left open")
		}
	})
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestKeysMatchAcrossPaths(t *testing.T) {
	// The stream and the snapshot must render the same key the same way,
	// NULL included, or dedup silently never matches.
	stream, ok := change.Key([]change.Value{text("a"), {Kind: change.Null}, text("7")}, []int{0, 1, 2})
	snapshot := change.RawKey([][]byte{[]byte("a"), nil, []byte("7")}, []int{0, 1, 2})
	if !ok {
		t.Fatal("a key with a NULL column was reported as not sent")
	}
	if _, ok := change.Key([]change.Value{text("a"), {Kind: change.Unchanged}}, []int{0, 1}); ok {
		t.Fatal("a key with an unsent value was reported as known")
	}
	if stream != snapshot {
		t.Fatalf("stream key %q != snapshot key %q", stream, snapshot)
	}
}

func TestArrayLiteral(t *testing.T) {
	tests := map[string][]string{
		`{"1"}`:             {"1"},
		`{"a\"b","c\\d"}`:   {`a"b`, `c\d`},
		`{"x,y","{z}"," "}`: {"x,y", "{z}", " "},
	}
	for want, in := range tests {
		if got := ArrayLiteral(in); got != want {
			t.Errorf("ArrayLiteral(%q) = %s, want %s", in, got, want)
		}
	}
}
