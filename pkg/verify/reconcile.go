package verify

import (
	"cmp"
	"slices"
	"strings"
)

// keyRow is one row seen on one side: its canonical key and row hash.
type keyRow struct {
	key  []string
	hash string
	seq  int64 // discovery order, so reports list rows in the order found
}

// keyID joins key parts unambiguously: PostgreSQL text cannot hold NUL.
func keyID(key []string) string { return strings.Join(key, "\x00") }

// candidate is a key that did not compare equal.
type candidate struct {
	key  []string
	kind Kind
	seq  int64
}

// reconciler pairs rows of the two sides by key. Rows seen on one side only
// wait here until the other side shows them or the pass ends. In range mode
// that holds only rows a chunk could not pair: a row the two servers order
// differently (another collation) lands in different chunks and is paired
// across them, so nothing depends on both servers sorting alike.
type reconciler struct {
	srcOnly map[string]keyRow
	tgtOnly map[string]keyRow
	diff    []candidate
	dups    []candidate
	equal   int64
	seq     int64
}

func newReconciler() *reconciler {
	return &reconciler{srcOnly: map[string]keyRow{}, tgtOnly: map[string]keyRow{}}
}

func (r *reconciler) source(key []string, hash string) {
	r.seq++
	row := keyRow{key: key, hash: hash, seq: r.seq}
	id := keyID(key)
	if t, ok := r.tgtOnly[id]; ok {
		delete(r.tgtOnly, id)
		r.pair(row, t)
		return
	}
	if _, ok := r.srcOnly[id]; ok {
		// Two source rows map onto one target key (a computed key that is
		// not unique): the target can hold only one of them.
		r.dups = append(r.dups, candidate{key: key, kind: Missing, seq: r.seq})
		return
	}
	r.srcOnly[id] = row
}

func (r *reconciler) target(key []string, hash string) {
	r.seq++
	row := keyRow{key: key, hash: hash, seq: r.seq}
	id := keyID(key)
	if s, ok := r.srcOnly[id]; ok {
		delete(r.srcOnly, id)
		r.pair(s, row)
		return
	}
	r.tgtOnly[id] = row
}

func (r *reconciler) pair(s, t keyRow) {
	if s.hash == t.hash {
		r.equal++
		return
	}
	r.diff = append(r.diff, candidate{key: s.key, kind: Different, seq: min(s.seq, t.seq)})
}

// candidates lists every key that is not known equal, in discovery order.
func (r *reconciler) candidates() []candidate {
	out := slices.Clone(r.diff)
	for _, s := range r.srcOnly {
		out = append(out, candidate{key: s.key, kind: Missing, seq: s.seq})
	}
	for _, t := range r.tgtOnly {
		out = append(out, candidate{key: t.key, kind: Extra, seq: t.seq})
	}
	slices.SortFunc(out, func(a, b candidate) int { return cmp.Compare(a.seq, b.seq) })
	return out
}

// pending is how many keys wait for the other side; it bounds memory.
func (r *reconciler) pending() int { return len(r.srcOnly) + len(r.tgtOnly) + len(r.diff) }
