// Package backfill copies the rows that existed before the slot, in short
// keyset chunks read while the stream runs, without a long transaction on
// the old database.
//
// Correctness follows DBLog (Netflix, 2020), with the window opened
// earlier than DBLog's low watermark. For each chunk a worker:
//  1. registers the chunk with the tracker: from then on the applier
//     records every key the stream changes in the chunk's table,
//  2. reads the chunk in one repeatable-read transaction and takes its
//     snapshot (pg_current_snapshot) with it,
//  3. checks that snapshot against the transactions the applier processed
//     before the registration (below), re-reading until it passes,
//  4. commits a high watermark (a transactional logical decoding message)
//     after the read.
//
// At the high watermark the applier writes the chunk minus every row whose
// key the stream changed since the registration. A change the read did
// not see is thereby never overwritten: it was applied already, or comes
// after the high watermark and is applied after the chunk. Dropping a row
// the read did see is harmless, because the stream applied that change
// (or, for an update that left TOASTed values out, re-read the whole row
// from the source).
//
// That leaves the changes the applier processed before the registration.
// The chunk row must not be older than them, which holds only if the read
// saw their transactions, and commit order is not visibility order:
// PostgreSQL flushes a commit record (from then on the walsender may send
// it) before it removes the transaction from the process array (from then
// on snapshots see it). In between the backend may be descheduled, or wait
// for a synchronous standby for as long as that takes; meanwhile the
// stream can deliver the transaction, the applier can delete the row, and
// a chunk registered afterwards reads the row as it was and writes it
// back. A low watermark has the same hole (its commit can precede the
// read's snapshot while an earlier commit is still invisible), and so
// does any window opened by time or WAL position, however early: only the
// snapshot knows what it shows. Hence step 3. The tracker logs, per table
// being copied, the xid of every transaction whose changes the applier
// processed; the registration copies the table's log into the chunk; the
// read's snapshot must show each of those xids, otherwise the worker waits
// until a fresh snapshot does and reads again. The registration stays, so
// what the stream changes meanwhile is still dropped at the high
// watermark. The stream sends a transaction only once it has committed
// (pgoutput v1), so a snapshot shows it exactly when its xid is below the
// snapshot's xmax and not in its running list.
//
// So, for a key the chunk writes, every change the applier made to it
// before the chunk came from a transaction the read saw, whose effect (or
// a later one: writers of a row wait for each other's end, so a snapshot
// that shows a later writer shows the earlier) is what the chunk carries,
// and every change after the registration dropped the row. No chunk
// overwrites a newer change, resurrects a deleted row, or loses an insert.
//
// The log stays small: a committed transaction that one snapshot shows is
// shown by every snapshot taken after it, so each read (and, while a
// worker waits, a snapshot every throttle_check_interval) prunes from
// every table's log the xids it shows. That is safe because the prune
// follows the pruning snapshot, and a chunk registered after the prune
// reads in a snapshot taken later still. What is left are the
// transactions processed since the last snapshot and those still
// invisible; a table is logged only until its last chunk is read.
//
// A transaction an earlier attempt or process applied is not in the log.
// For it to be still invisible its commit must have stayed in that window
// for longer than a reconnect, which in practice means a synchronous
// standby holds it: each job therefore starts by adding to its table's log
// every transaction whose session waits in SyncRep (pg_stat_activity).
// That is best effort: tandem's role sees other roles' wait events only
// with pg_read_all_stats, and a COMMIT PREPARED's transaction is not its
// session's.
//
// Chunk rows are written in the same target transaction as the high
// watermark's commit position and the chunk's cursor, so a restart
// resumes after the last applied chunk. Keys on both paths are the text
// output of the same source columns, so the stream and the snapshot
// canonicalise them identically.
package backfill

import (
	"slices"
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
	// unseen are the transactions of the table the applier processed
	// before the registration that no snapshot of this chunk has shown
	// yet; only the chunk's worker touches it after the registration.
	unseen []uint32
}

// Tracker connects chunk readers with the applier, which alone decides
// what is written.
type Tracker struct {
	mu     sync.Mutex
	chunks map[string]*Chunk
	open   map[string][]*Chunk // source table -> chunks between their watermarks
	nopen  int
	keys   map[string][]int // source table -> key column positions
	// logs hold, per source table, the transactions the applier processed
	// that no snapshot has shown yet (see the package comment). Until the
	// runner declares its tables, every table is logged: the applier may
	// start first.
	logs     map[string]*xidLog
	declared bool
	ref      uint64 // the xmax of the latest snapshot observed
}

type xidLog struct {
	jobs int // unfinished jobs copying the table
	xids []uint32
}

// NewTracker returns an empty tracker.
func NewTracker() *Tracker {
	return &Tracker{chunks: map[string]*Chunk{}, open: map[string][]*Chunk{}, logs: map[string]*xidLog{}}
}

// register opens a chunk's window: from now on its table's changed keys
// are recorded for it, and what was processed before is in unseen (see the
// package comment for why both).
func (t *Tracker) register(c *Chunk) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c.released = make(chan struct{})
	c.touched = map[string]struct{}{}
	if l := t.logs[c.Source]; l != nil {
		c.unseen = slices.Clone(l.xids)
	}
	t.chunks[c.ID] = c
	t.open[c.Source] = append(t.open[c.Source], c)
	t.nopen++
}

// logLocked notes that the applier processed a change of xid to source.
func (t *Tracker) logLocked(source string, xid uint32) {
	if xid == 0 {
		return
	}
	l := t.logs[source]
	if l == nil {
		if t.declared {
			return // not being copied
		}
		l = &xidLog{}
		t.logs[source] = l
	}
	// A transaction arrives whole, so its changes to a table are adjacent.
	if n := len(l.xids); n == 0 || l.xids[n-1] != xid {
		l.xids = append(l.xids, xid)
	}
}

// logging reports whether any table is logged.
func (t *Tracker) logging() bool { return !t.declared || len(t.logs) > 0 }

// watch declares the tables the runner copies: only they are logged from
// now on, each until unwatch for every job copying it.
func (t *Tracker) watch(sources []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	logs := map[string]*xidLog{}
	for _, s := range sources {
		l := logs[s]
		if l == nil {
			if l = t.logs[s]; l == nil {
				l = &xidLog{}
			}
			l.jobs = 0
			logs[s] = l
		}
		l.jobs++
	}
	t.logs, t.declared = logs, true
}

// unwatch is called once a job has read its last chunk.
func (t *Tracker) unwatch(source string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l := t.logs[source]; l != nil {
		if l.jobs--; l.jobs <= 0 {
			delete(t.logs, source)
		}
	}
}

// addUnseen logs transactions of source as if the applier had processed
// them (see the package comment: those an earlier attempt may have
// applied).
func (t *Tracker) addUnseen(source string, xids []uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, x := range xids {
		t.logLocked(source, x)
	}
}

// observe prunes from every log the transactions s shows: every snapshot
// taken after s shows them too.
func (t *Tracker) observe(s Snapshot) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ref = max(t.ref, s.Xmax)
	for _, l := range t.logs {
		l.xids = slices.DeleteFunc(l.xids, s.Visible)
		if cap(l.xids) > 1024 && len(l.xids) < cap(l.xids)/4 {
			// Let a burst's backing array go.
			l.xids = slices.Clone(l.xids)
		}
	}
}

// reference is the xmax of the latest snapshot observed (0: none yet).
func (t *Tracker) reference() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ref
}

// logged is how many xids the logs hold.
func (t *Tracker) logged() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, l := range t.logs {
		n += len(l.xids)
	}
	return n
}

// unseenBy keeps, of the transactions processed before the chunk's
// registration, those s does not show, and returns them. Once it returns
// none, no later snapshot can miss them either.
func (c *Chunk) unseenBy(s Snapshot) []uint32 {
	c.unseen = slices.DeleteFunc(c.unseen, s.Visible)
	return c.unseen
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
