package transform

import (
	"fmt"
	"strings"

	"github.com/tandem-migrate/tandem/pkg/change"
)

// RowKey identifies a source row by the columns the target key is computed
// from, in their text form: two changes with the same RowKey hit the same
// target row.
func (m *Mapping) RowKey(tuple []change.Value) (string, bool) {
	return change.Key(tuple, m.keyDeps)
}

// Groupable reports whether this mapping's changes may be compacted per
// key and applied set-based within a target transaction: the target key
// must be its only unique constraint (so no other row can conflict in
// between), and the caller must know no foreign key ties it to another
// mapped table (so order across tables does not matter).
func (m *Mapping) Groupable() bool {
	return len(m.Target.UniqueKeys) == 1 && m.Target.HasUniqueKey(m.Key) && len(m.keyDeps) > 0
}

// SourceIndexes returns the positions of the named source columns.
func (m *Mapping) SourceIndexes(names []string) ([]int, error) {
	out := make([]int, len(names))
	for i, n := range names {
		out[i] = -1
		for j, c := range m.Source {
			if c.Name == n {
				out[i] = j
			}
		}
		if out[i] < 0 {
			return nil, fmt.Errorf("%s has no column %q", m.SourceName, n)
		}
	}
	return out, nil
}

// DirectCopy describes a mapping whose target rows are the source rows
// themselves: no filter, and every mapped target column a bare copy of a
// source column of the same type. Such rows can be COPYed straight into
// the target, where the type's input function reads the source's output
// exactly as the cast of the row path would. Columns are the target
// columns in COPY order, Source their source positions, and Key the
// positions of the target key in Columns.
type DirectCopy struct {
	Columns  []string
	Source   []int
	KeyTypes []string
	KeySrc   []int
	// Ranged is set when the first key column's type sorts the same on
	// every server (no collation), so a chunk read in key order spans
	// exactly [first row, last row] on the target too.
	Ranged bool
	// Binary is set when every source column is copied to exactly one
	// target column and has a built-in type with a binary send/receive
	// pair. Built-in types have the same OID on every server, so their
	// binary form (which for arrays names the element type's OID) reads
	// back unchanged on the target; a source row read in binary is then a
	// COPY row as it stands, for the target (columns BySource) and for
	// the staging table alike, and is never converted to text and parsed
	// again on either side.
	Binary bool
	// BySource are the target columns in source column order; set with
	// Binary.
	BySource []string
}

// noBinaryIO are the built-in types (and their arrays) without binary
// send/receive functions.
var noBinaryIO = map[uint32]bool{1033: true, 1034: true, 3642: true, 3644: true} // aclitem, gtsvector

// collationFree are built-in types whose order does not depend on a
// collation or a server setting.
var collationFree = map[uint32]bool{
	20: true, 21: true, 23: true, 26: true, 1700: true, // int8, int2, int4, oid, numeric
	1082: true, 1114: true, 1184: true, 2950: true, // date, timestamp, timestamptz, uuid
}

// Direct returns the mapping's DirectCopy, or false when rows need the
// expression path.
func (m *Mapping) Direct() (DirectCopy, bool) {
	var d DirectCopy
	if m.Filter != "" {
		return d, false
	}
	for _, c := range m.Columns {
		if len(c.Deps) != 1 || c.Expr != quote(m.Source[c.Deps[0]].Name) {
			return d, false
		}
		src := m.Source[c.Deps[0]]
		tc := m.Target.Column(c.Name)
		same := src.TypeOID == tc.TypeOID && src.TypeOID < firstUserOID ||
			src.TypeOID >= firstUserOID && src.BindType == tc.Type
		if !same {
			return d, false
		}
		d.Columns = append(d.Columns, c.Name)
		d.Source = append(d.Source, c.Deps[0])
	}
	for _, k := range m.Key {
		c := m.column(k)
		t := m.Target.Column(k).Type
		if strings.HasSuffix(t, "]") {
			return d, false // an array key cannot be probed as an array of keys
		}
		d.KeyTypes = append(d.KeyTypes, t)
		d.KeySrc = append(d.KeySrc, c.Deps[0])
	}
	d.Ranged = collationFree[m.Target.Column(m.Key[0]).TypeOID]
	d.BySource = make([]string, len(m.Source))
	for i, src := range d.Source {
		if d.BySource[src] != "" {
			d.BySource = nil
			return d, true // a source column copied twice
		}
		d.BySource[src] = d.Columns[i]
	}
	for i, c := range m.Source {
		if d.BySource[i] == "" || c.TypeOID >= firstUserOID || noBinaryIO[c.TypeOID] {
			d.BySource = nil
			return d, true
		}
	}
	d.Binary = true
	return d, true
}
