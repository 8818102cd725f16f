// Package backfill copies the rows that existed before the slot, in short
// keyset chunks read while the stream runs, without a long transaction on
// the old database.
//
// Correctness follows DBLog (Netflix, 2020), with the window opened
// earlier than DBLog's low watermark. For each chunk a worker:
//  1. registers the chunk with the tracker: from then on the applier
//     records every key the stream changes in the chunk's table,
//  2. reads the chunk in its own short statement,
//  3. commits a high watermark (a transactional logical decoding message)
//     after the read.
//
// Why not a low watermark: commit order in the WAL is not visibility
// order. A transaction can write its commit record before the low
// watermark's and still become visible only after the chunk read took its
// snapshot; the stream delivers it before the low watermark, so a window
// opened there misses it and the chunk's stale row wins (a deleted row
// came back under load, seen in the kill -9 and under-writes tests). A
// transaction the read does not see finishes its commit after the read
// began, so the applier nearly always receives it after the registration:
// recording from there catches it (the exception is below).
//
// At the high watermark the applier writes the chunk minus every row whose
// key the stream changed since the registration. A change the read did
// not see is thereby never overwritten: it was applied already, or comes
// after the high watermark and is applied after the chunk. A change the
// read did see and that the applier processed before the registration is
// older than the chunk row, which wins. Dropping a row the read did see
// is harmless, because the stream applied that change (or, for an update
// that left TOASTed values out, re-read the whole row from the source).
// So no chunk overwrites a newer change, resurrects a deleted row, or
// loses an insert. Chunk rows are written in the same target transaction
// as the high watermark's commit position and the chunk's cursor, so a
// restart resumes after the last applied chunk.
//
// One case is left: a transaction whose commit the applier processed
// before the registration but which was still not visible when the read
// took its snapshot, milliseconds later (its backend stalled between
// flushing its commit record and leaving the process array).
//
// Keys on both paths are the text output of the same source columns, so
// the stream and the snapshot canonicalise them identically.
package backfill

import (
	"sync"
)

// MessagePrefix marks tandem's watermark messages in the WAL.
const MessagePrefix = "tandem.backfill"

// Chunk is one keyset page in flight.
type Chunk struct {
	ID     string
	Job    *Job
	Source string // schema.table of the source
	// Rows in source column order, text, nil is NULL; for a binary job
	// (Job.Binary) only the key columns (Job.TextIndex), the rows
	// themselves being in Body. Set before the high watermark is written.
	Rows [][][]byte
	// Body holds a binary job's rows in COPY binary form, without header
	// and trailer; ends[i] is where row i ends.
	Body []byte
	ends []int
	// Cursor is the key of the last row (the next chunk starts after it).
	Cursor []string
	Final  bool
	Bytes  int64

	rowCount  int
	full      bool // ended by the byte limit
	touched   map[string]struct{}
	truncated bool
	released  chan struct{}
}

// Tracker connects chunk readers with the applier, which alone decides
// what is written.
type Tracker struct {
	mu     sync.Mutex
	chunks map[string]*Chunk
	open   map[string][]*Chunk // source table -> chunks between their watermarks
	nopen  int
	keys   map[string][]int // source table -> key column positions
}

// NewTracker returns an empty tracker.
func NewTracker() *Tracker {
	return &Tracker{chunks: map[string]*Chunk{}, open: map[string][]*Chunk{}}
}

// register opens a chunk's window: from now on its table's changed keys
// are recorded for it (see the package comment for why here).
func (t *Tracker) register(c *Chunk) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c.released = make(chan struct{})
	c.touched = map[string]struct{}{}
	t.chunks[c.ID] = c
	t.open[c.Source] = append(t.open[c.Source], c)
	t.nopen++
}

func (t *Tracker) setRows(id string, r *chunkRows, cursor []string, final bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c := t.chunks[id]; c != nil {
		c.Rows, c.Body, c.ends, c.Cursor, c.Final, c.Bytes = r.rows, r.body, r.ends, cursor, final, r.bytes
	}
}

// forget drops a chunk whose watermarks will never be applied (its reader
// failed); the stream ignores watermarks it does not know.
func (t *Tracker) forget(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c := t.chunks[id]; c != nil {
		delete(t.chunks, id)
		t.closeLocked(c)
	}
}

// Open reports whether any chunk is registered and not yet applied.
func (t *Tracker) Open() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.nopen > 0
}

// High is called by the applier at a chunk's high watermark. It returns
// the chunk with the rows the stream touched between the watermarks
// removed, or nil for a watermark this process did not write.
func (t *Tracker) High(id string) *Chunk {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.chunks[id]
	if c == nil {
		return nil
	}
	delete(t.chunks, id)
	t.closeLocked(c)
	if c.truncated {
		c.Rows, c.Body, c.ends = nil, nil, nil
	} else if len(c.touched) > 0 {
		c.drop(func(r [][]byte) bool {
			_, hit := c.touched[c.Job.rowKey(r)]
			return hit
		})
	}
	return c
}

// drop removes the rows for which hit is true, from Body too.
func (c *Chunk) drop(hit func(row [][]byte) bool) {
	kept := c.Rows[:0]
	var body []byte
	var ends []int
	start := 0
	for i, r := range c.Rows {
		end := 0
		if c.Body != nil {
			end = c.ends[i]
		}
		if !hit(r) {
			kept = append(kept, r)
			if c.Body != nil {
				body = append(body, c.Body[start:end]...)
				ends = append(ends, len(body))
			}
		}
		start = end
	}
	c.Rows = kept
	if c.Body != nil {
		c.Body, c.ends = body, ends
	}
}

func (t *Tracker) closeLocked(c *Chunk) {
	list := t.open[c.Source]
	for i, o := range list {
		if o == c {
			t.open[c.Source] = append(list[:i], list[i+1:]...)
			t.nopen--
			break
		}
	}
}

// Release tells the reader a chunk is applied (or abandoned), freeing its
// slot.
func (c *Chunk) Release() {
	select {
	case <-c.released:
	default:
		close(c.released)
	}
}
