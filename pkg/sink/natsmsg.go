package sink

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/tandem-migrate/tandem/pkg/change"
)

// The message format of the JetStream sink. One message per row change,
// JSON, on <prefix>.<schema>.<table>; headers say where it sits in the
// old database's history, so a consumer can rebuild transactions and
// tandem can find where it stopped.
const (
	// HeaderMigration names the migration that published the message.
	HeaderMigration = "Tandem-Migration"
	// HeaderCommitLSN is the commit LSN of the source transaction.
	HeaderCommitLSN = "Tandem-Commit-LSN"
	// HeaderSeq is the message's position in its transaction, from 0.
	HeaderSeq = "Tandem-Tx-Seq"
	// HeaderLast is "true" on the last message of a transaction.
	HeaderLast = "Tandem-Tx-Last"
	// HeaderEndLSN, on the last message, is the transaction's end LSN: the
	// position the replication slot may be confirmed to.
	HeaderEndLSN = "Tandem-End-LSN"
)

// Ops of published messages beyond change.Op's: a row copied by the
// backfill, and the end of a transaction whose last message was lost to
// a crash (see Publisher).
const (
	OpRead   = "read"
	OpCommit = "commit"
)

// Field is one column of a published row: its text form as PostgreSQL
// prints it and its type, which says how it is written in JSON.
type Field struct {
	Name string
	Type uint32
	Text []byte
	Null bool
}

// Event is one published row change before encoding.
type Event struct {
	Op            string
	Schema, Table string
	// Key identifies the row; OldKey is set on an update that changed it.
	Key, OldKey []Field
	// After is the row after the change; Before the row before it, when
	// the old database sent it whole (REPLICA IDENTITY FULL).
	After, Before []Field
	// Unchanged lists columns of After whose value the old database did
	// not send (an untouched out-of-line value): the row keeps its value.
	Unchanged  []string
	CommitLSN  change.LSN
	XID        uint32
	CommitTime time.Time
	Seq        int
}

// AppendJSON encodes e. Numbers, booleans and json/jsonb values are JSON
// numbers, booleans and documents; every other value is a string in
// PostgreSQL's text form, so nothing narrows on the way.
func (e *Event) AppendJSON(b []byte) []byte {
	b = append(b, `{"op":`...)
	b = appendString(b, e.Op)
	b = append(b, `,"schema":`...)
	b = appendString(b, e.Schema)
	b = append(b, `,"table":`...)
	b = appendString(b, e.Table)
	b = appendRow(b, "key", e.Key)
	b = appendRow(b, "old_key", e.OldKey)
	b = appendRow(b, "after", e.After)
	b = appendRow(b, "before", e.Before)
	if len(e.Unchanged) > 0 {
		b = append(b, `,"unchanged":[`...)
		for i, n := range e.Unchanged {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, n)
		}
		b = append(b, ']')
	}
	b = append(b, `,"lsn":"`...)
	b = append(b, e.CommitLSN.String()...)
	b = append(b, `","xid":`...)
	b = strconv.AppendUint(b, uint64(e.XID), 10)
	b = append(b, `,"commit_time":"`...)
	b = e.CommitTime.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","seq":`...)
	b = strconv.AppendInt(b, int64(e.Seq), 10)
	return append(b, '}')
}

func appendRow(b []byte, name string, row []Field) []byte {
	if row == nil {
		return b
	}
	b = append(b, ",\""...)
	b = append(b, name...)
	b = append(b, "\":{"...)
	for i, f := range row {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, f.Name)
		b = append(b, ':')
		b = AppendValue(b, f.Type, f.Text, f.Null)
	}
	return append(b, '}')
}

// Type OIDs whose text form is written as JSON as it stands.
const (
	oidBool    = 16
	oidInt8    = 20
	oidInt2    = 21
	oidInt4    = 23
	oidOID     = 26
	oidJSON    = 114
	oidFloat4  = 700
	oidFloat8  = 701
	oidNumeric = 1700
	oidJSONB   = 3802
)

// AppendValue writes one value of type typ in its text form as JSON.
func AppendValue(b []byte, typ uint32, text []byte, null bool) []byte {
	if null {
		return append(b, "null"...)
	}
	switch typ {
	case oidBool:
		if len(text) == 1 && text[0] == 't' {
			return append(b, "true"...)
		}
		if len(text) == 1 && text[0] == 'f' {
			return append(b, "false"...)
		}
	case oidInt2, oidInt4, oidInt8, oidOID, oidFloat4, oidFloat8, oidNumeric:
		// NaN and Infinity have no JSON number; they stay strings.
		if isJSONNumber(text) {
			return append(b, text...)
		}
	case oidJSON, oidJSONB:
		if json.Valid(text) {
			return append(b, text...)
		}
	}
	return appendString(b, string(text))
}

func isJSONNumber(s []byte) bool {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
			n++
		}
		return n
	}
	start := i
	if n := digits(); n == 0 || (n > 1 && s[start] == '0') {
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(s)
}

const hexDigits = "0123456789abcdef"

func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// Message is a published message as a consumer reads it.
type Message struct {
	Op         string                     `json:"op"`
	Schema     string                     `json:"schema"`
	Table      string                     `json:"table"`
	Key        map[string]json.RawMessage `json:"key,omitempty"`
	OldKey     map[string]json.RawMessage `json:"old_key,omitempty"`
	After      map[string]json.RawMessage `json:"after,omitempty"`
	Before     map[string]json.RawMessage `json:"before,omitempty"`
	Unchanged  []string                   `json:"unchanged,omitempty"`
	LSN        string                     `json:"lsn"`
	XID        uint32                     `json:"xid"`
	CommitTime time.Time                  `json:"commit_time"`
	Seq        int                        `json:"seq"`
}

// Place is where a message sits in the old database's history, from its
// headers.
type Place struct {
	Migration string
	CommitLSN change.LSN
	Seq       int
	Last      bool
	// EndLSN is set on the last message of a transaction.
	EndLSN change.LSN
}

// After reports whether a message at (commit, seq) comes after p in
// commit order; tandem publishes nothing at or before its last place.
func (p Place) After(commit change.LSN, seq int) bool {
	if commit != p.CommitLSN {
		return commit > p.CommitLSN
	}
	return !p.Last && seq > p.Seq
}

// ParsePlace reads a message's place from its headers.
func ParsePlace(h nats.Header) (Place, error) {
	var p Place
	var err error
	p.Migration = h.Get(HeaderMigration)
	if p.Migration == "" {
		return p, fmt.Errorf("no %s header: not published by tandem", HeaderMigration)
	}
	if p.CommitLSN, err = parseLSN(h.Get(HeaderCommitLSN)); err != nil {
		return p, fmt.Errorf("%s: %w", HeaderCommitLSN, err)
	}
	if p.Seq, err = strconv.Atoi(h.Get(HeaderSeq)); err != nil {
		return p, fmt.Errorf("%s: %w", HeaderSeq, err)
	}
	p.Last = h.Get(HeaderLast) == "true"
	if p.Last {
		if p.EndLSN, err = parseLSN(h.Get(HeaderEndLSN)); err != nil {
			return p, fmt.Errorf("%s: %w", HeaderEndLSN, err)
		}
	}
	return p, nil
}

func parseLSN(s string) (change.LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("%q is not an LSN", s)
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("%q is not an LSN", s)
	}
	return change.LSN(h<<32 | l), nil
}

// MsgID is the message's Nats-Msg-Id: the same change always gets the
// same one, so JetStream drops a copy sent again within its duplicate
// window.
func MsgID(migration string, commit change.LSN, seq int) string {
	return migration + ":" + commit.String() + ":" + strconv.Itoa(seq)
}

// Subject is where a table's changes go: <prefix>.<schema>.<table>, with
// characters a subject token cannot hold replaced by _.
func Subject(prefix, schema, table string) string {
	return prefix + "." + subjectToken(schema) + "." + subjectToken(table)
}

func subjectToken(s string) string {
	if s == "" {
		return "_"
	}
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r == '.' || r == '*' || r == '>' || r == 0x7f {
			return '_'
		}
		return r
	}, s)
}
