package sink

import (
	"bytes"
	"context"
	"io"
	"strings"

	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

// Staged collects rows in COPY format, text unless reset for binary, for
// a staging table or a direct COPY.
type Staged struct {
	buf              bytes.Buffer
	Rows             int
	deletes, upserts bool
	binary           bool
}

// binaryHeader starts a COPY in binary format: signature, flags, header
// extension length.
const binaryHeader = "PGCOPY\n\xff\r\n\x00" + "\x00\x00\x00\x00" + "\x00\x00\x00\x00"

// Reset empties the buffer for reuse, for COPY text.
func (st *Staged) Reset() {
	st.buf.Reset()
	st.Rows, st.deletes, st.upserts, st.binary = 0, false, false, false
}

// ResetBinary empties the buffer for rows in COPY binary format, whose
// values are the binary send form of their type.
func (st *Staged) ResetBinary() {
	st.Reset()
	st.binary = true
}

// AddBinaryRows stages rows already in COPY binary form (each a field
// count and length-prefixed binary values), all upserts.
func (st *Staged) AddBinaryRows(body []byte, rows int) {
	st.buf.Write(body)
	st.Rows += rows
	st.upserts = st.upserts || rows > 0
}

// AddRaw stages a row given as text values (nil is NULL) for op 'u' or 'd'.
func (st *Staged) AddRaw(op byte, vals [][]byte) {
	for _, v := range vals {
		if v == nil {
			st.buf.WriteString(`\N`)
		} else {
			writeCopyText(&st.buf, v)
		}
		st.buf.WriteByte('\t')
	}
	st.finish(op)
}

// AddTuple stages a decoded tuple; values not sent (unchanged TOAST) must
// have been filled in by the caller, and are written as NULL otherwise,
// which only delete rows may carry.
func (st *Staged) AddTuple(op byte, vals []change.Value) {
	for _, v := range vals {
		if v.Kind == change.Text {
			writeCopyText(&st.buf, v.Data)
		} else {
			st.buf.WriteString(`\N`)
		}
		st.buf.WriteByte('\t')
	}
	st.finish(op)
}

func (st *Staged) finish(op byte) {
	st.buf.WriteByte(op)
	st.buf.WriteByte('\n')
	st.count(op)
}

func (st *Staged) count(op byte) {
	st.Rows++
	if op == 'd' {
		st.deletes = true
	} else {
		st.upserts = true
	}
}

func writeCopyText(b *bytes.Buffer, v []byte) {
	start := 0
	for i, ch := range v {
		var esc string
		switch ch {
		case '\\':
			esc = `\\`
		case '\n':
			esc = `\n`
		case '\r':
			esc = `\r`
		case '\t':
			esc = `\t`
		default:
			continue
		}
		b.Write(v[start:i])
		b.WriteString(esc)
		start = i + 1
	}
	b.Write(v[start:])
}

// ApplyStaged moves staged rows into the target inside the open
// transaction, with the statements the mapping renders for them.
func (s *PGSink) ApplyStaged(ctx context.Context, m *transform.Mapping, base string, st *Staged, o Cause) error {
	if st.Rows == 0 {
		return nil
	}
	stage := m.StageName(base)
	w := m.StagedWrite(stage, !s.staging[stage], st.binary, st.deletes, st.upserts)
	if err := s.CopyIn(ctx, w.DDL, w.Copy, st.Reader(), o); err != nil {
		return err
	}
	// Created for the session once its transaction commits; until then a
	// rollback would undo it, so abort forgets it again.
	s.staging[stage] = true
	for _, sql := range w.Then {
		s.Exec(sql, nil, o)
	}
	return nil
}

// AddColumns stages only the listed positions of a row, for a COPY with a
// column list; no op column is written.
func (st *Staged) AddColumns(vals [][]byte, idx []int) {
	for i, j := range idx {
		if i > 0 {
			st.buf.WriteByte('\t')
		}
		if vals[j] == nil {
			st.buf.WriteString(`\N`)
		} else {
			writeCopyText(&st.buf, vals[j])
		}
	}
	st.buf.WriteByte('\n')
	st.Rows++
	st.upserts = true
}

// Reader returns the staged COPY data.
func (st *Staged) Reader() io.Reader {
	if st.binary {
		return BinaryCopy(st.buf.Bytes())
	}
	return bytes.NewReader(st.buf.Bytes())
}

// BinaryCopy frames rows in COPY binary form (each a field count and
// length-prefixed values) as a whole COPY binary stream.
func BinaryCopy(rows []byte) io.Reader {
	return io.MultiReader(strings.NewReader(binaryHeader), bytes.NewReader(rows), strings.NewReader("\xff\xff"))
}
