// Package change defines the events that flow decoder -> transform -> sink.
// The decoder produces them; the pipeline's applier consumes them.
// Values stay in PostgreSQL's text output form from pgoutput to the target's
// input functions, so no Go type ever narrows a numeric, a timestamp or a
// jsonb on the way.
package change

import (
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
)

// LSN is a WAL position.
type LSN = pglogrepl.LSN

// Event is one item of the decoded stream, in WAL order. The set is
// closed: only this package's types implement it, so a consumer's type
// switch can name every case.
type Event interface{ event() }

func (*Begin) event()    {}
func (*Commit) event()   {}
func (*Change) event()   {}
func (*Relation) event() {}
func (*Message) event()  {}
func (*Origin) event()   {}
func (Idle) event()      {}

// Idle reports a keepalive received outside any transaction: everything
// the server had to send up to WALEnd has been sent, and none of it was
// for us.
type Idle struct {
	WALEnd LSN
}

// Op is the kind of a row change.
type Op byte

const (
	Insert   Op = 'I'
	Update   Op = 'U'
	Delete   Op = 'D'
	Truncate Op = 'T'
)

func (o Op) String() string {
	switch o {
	case Insert:
		return "insert"
	case Update:
		return "update"
	case Delete:
		return "delete"
	case Truncate:
		return "truncate"
	}
	return "unknown"
}

// Kind says how a column value arrived.
type Kind byte

const (
	// Null is SQL NULL.
	Null Kind = 'n'
	// Unchanged is a TOASTed value an UPDATE did not touch: the value was not
	// sent and the target must keep what it has.
	Unchanged Kind = 'u'
	// Text is a value in the type's text output form.
	Text Kind = 't'
)

// Value is one column value. Data is owned by the Value (copied out of the
// receive buffer).
type Value struct {
	Kind Kind
	Data []byte
}

// Column is one column of a Relation as pgoutput describes it.
type Column struct {
	Name    string
	TypeOID uint32
	TypeMod int32
	// Key marks a replica identity column.
	Key bool
}

// Relation is a source table as described by the latest Relation message.
type Relation struct {
	OID             uint32
	Schema, Name    string
	ReplicaIdentity byte
	Columns         []Column
	// Leaf is set when a publication that does not publish via the root
	// sent a partition's changes under the partition's own name: Leaf keeps
	// that name, and Schema and Name are rewritten to the partitioned table
	// the user configured, so every consumer sees one table.
	Leaf string
}

// QualifiedName is schema.name, unquoted, as config files spell it.
func (r *Relation) QualifiedName() string { return r.Schema + "." + r.Name }

// Change is one row change (or one TRUNCATE of several relations).
type Change struct {
	Op Op
	// XID is the source transaction's (top-level) ID, as its Begin carried
	// it; 0 where unknown. The backfill checks chunk reads against it.
	XID uint32
	Rel *Relation
	// New is the new tuple (Insert, Update).
	New []Value
	// Old is the old key ('K') or whole old row ('O') for Update and Delete;
	// nil when the server sent none.
	Old []Value
	// Truncated lists the relations of a Truncate.
	Truncated []*Relation
	// Cascade and RestartIdentity are TRUNCATE's options.
	Cascade, RestartIdentity bool
}

// Begin opens a source transaction.
type Begin struct {
	XID        uint32
	FinalLSN   LSN
	CommitTime time.Time
}

// Commit closes a source transaction. EndLSN is the position that, once
// durable on the target, is safe to confirm to the slot.
type Commit struct {
	LSN        LSN
	EndLSN     LSN
	CommitTime time.Time
}

// Message is a logical decoding message (pg_logical_emit_message).
type Message struct {
	LSN           LSN
	Transactional bool
	Prefix        string
	Content       []byte
}

// Origin names the replication origin of the current transaction.
type Origin struct {
	LSN  LSN
	Name string
}

// Key renders the values at idx as one comparable string: text values as
// sent, NULL (and an unchanged TOAST value, which has none) as a marker
// byte. ok is false when a value was not sent. RawKey renders a row read
// as text the same way, so the stream and a snapshot agree on every key.
func Key(values []Value, idx []int) (key string, ok bool) {
	var b strings.Builder
	ok = true
	for i, j := range idx {
		if i > 0 {
			b.WriteByte(0)
		}
		if j >= len(values) || values[j].Kind != Text {
			ok = ok && j < len(values) && values[j].Kind == Null
			b.WriteByte(1)
			continue
		}
		b.Write(values[j].Data)
	}
	return b.String(), ok
}

// RawKey is Key for a row of text values (nil is NULL).
func RawKey(row [][]byte, idx []int) string {
	var b strings.Builder
	for i, j := range idx {
		if i > 0 {
			b.WriteByte(0)
		}
		if row[j] == nil {
			b.WriteByte(1)
			continue
		}
		b.Write(row[j])
	}
	return b.String()
}
