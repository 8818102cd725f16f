// Package backfill copies the rows that existed before the slot, in short
// keyset chunks read while the stream runs, without a long transaction on
// the old database.
//
// Correctness follows DBLog (Netflix, 2020). For each chunk a worker:
//  1. commits a low watermark (a transactional logical decoding message),
//  2. reads the chunk in its own short statement (its snapshot is taken
//     after the low watermark committed),
//  3. commits a high watermark (after the snapshot).
//
// The applier sees both watermarks in commit order. A stream change that
// commits before the low watermark is visible to the chunk read, so the
// chunk row is at least as new: writing it at the high watermark is right.
// A change that commits after the high watermark is not visible to the read
// and is applied after the chunk, so it wins. A change between the two may
// or may not be visible; for its key the chunk row is dropped and the
// stream's own changes, applied in order, decide the row. So no chunk can
// overwrite a newer stream change, resurrect a row deleted before or during
// its read, or lose an insert. Chunk rows are written in the same target
// transaction as the high watermark's commit position and the chunk's
// cursor, so a restart resumes after the last applied chunk.
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

func (t *Tracker) register(c *Chunk) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c.released = make(chan struct{})
	t.chunks[c.ID] = c
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

// Low is called by the applier at a chunk's low watermark: from here on,
// keys changed in its table are recorded.
func (t *Tracker) Low(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.chunks[id]
	if c == nil || c.touched != nil {
		return
	}
	c.touched = map[string]struct{}{}
	t.open[c.Source] = append(t.open[c.Source], c)
	t.nopen++
}

// Open reports whether any chunk is between its watermarks.
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
	if c == nil || c.touched == nil {
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
	if c.touched == nil {
		return
	}
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
