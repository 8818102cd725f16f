package natstest

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tandem-migrate/tandem/pkg/sink"
)

// Msg is one message of a stream, read from its start.
type Msg struct {
	StreamSeq uint64
	Subject   string
	Place     sink.Place
	M         sink.Message
}

// ReadAll reads every message of st up to its last sequence now, in
// stream order, as a consumer reading from the start would.
func ReadAll(ctx context.Context, st jetstream.Stream) ([]Msg, error) {
	info, err := st.Info(ctx)
	if err != nil {
		return nil, err
	}
	last := info.State.LastSeq
	if info.State.Msgs == 0 {
		return nil, nil
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return nil, err
	}
	var out []Msg
	for {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return nil, err
			}
			p, err := sink.ParsePlace(m.Headers())
			if err != nil {
				return nil, fmt.Errorf("message %d on %s: %w", md.Sequence.Stream, m.Subject(), err)
			}
			var sm sink.Message
			if err := json.Unmarshal(m.Data(), &sm); err != nil {
				return nil, fmt.Errorf("message %d on %s: %w: %s", md.Sequence.Stream, m.Subject(), err, m.Data())
			}
			out = append(out, Msg{StreamSeq: md.Sequence.Stream, Subject: m.Subject(), Place: p, M: sm})
			if md.Sequence.Stream >= last {
				return out, nil
			}
		}
		if err := batch.Error(); err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, fmt.Errorf("stream ended at %d messages before its last sequence %d", len(out), last)
		}
	}
}

// CheckHistory checks what a consumer relies on: every message once (no
// two with one place), transactions in commit order, each whole and in
// order (positions 0, 1, ... with the last marked, nothing of another
// transaction in between), and the headers agreeing with the bodies.
func CheckHistory(msgs []Msg) error {
	seen := map[[2]uint64]uint64{}
	var open *sink.Place
	for i, m := range msgs {
		p := m.Place
		k := [2]uint64{uint64(p.CommitLSN), uint64(p.Seq)}
		if first, dup := seen[k]; dup {
			return fmt.Errorf("message %d repeats transaction %s position %d, first at message %d: published twice", m.StreamSeq, p.CommitLSN, p.Seq, first)
		}
		seen[k] = m.StreamSeq
		if m.M.LSN != p.CommitLSN.String() || m.M.Seq != p.Seq {
			return fmt.Errorf("message %d: body says %s #%d, headers %s #%d", m.StreamSeq, m.M.LSN, m.M.Seq, p.CommitLSN, p.Seq)
		}
		switch {
		case open != nil && p.CommitLSN == open.CommitLSN:
			if p.Seq != open.Seq+1 {
				return fmt.Errorf("message %d: transaction %s goes from position %d to %d", m.StreamSeq, p.CommitLSN, open.Seq, p.Seq)
			}
		case open != nil:
			return fmt.Errorf("message %d: transaction %s starts while %s (at position %d) has not ended", m.StreamSeq, p.CommitLSN, open.CommitLSN, open.Seq)
		case i > 0 && p.CommitLSN <= msgs[i-1].Place.CommitLSN:
			return fmt.Errorf("message %d: transaction %s after %s: not in commit order", m.StreamSeq, p.CommitLSN, msgs[i-1].Place.CommitLSN)
		case p.Seq != 0:
			return fmt.Errorf("message %d: transaction %s starts at position %d", m.StreamSeq, p.CommitLSN, p.Seq)
		}
		if p.Last {
			open = nil
		} else {
			open = &p
		}
	}
	return nil
}

// Image is what a consumer that applies the messages holds: table ->
// key -> column -> JSON value.
type Image map[string]map[string]map[string]json.RawMessage

// Apply plays msgs into an image: read, insert and update upsert (a
// column listed as unchanged keeps its value; old_key moves the row),
// delete removes, truncate empties.
func Apply(msgs []Msg) Image {
	img := Image{}
	for _, m := range msgs {
		t := m.M.Schema + "." + m.M.Table
		rows := img[t]
		if rows == nil {
			rows = map[string]map[string]json.RawMessage{}
			img[t] = rows
		}
		switch m.M.Op {
		case "truncate":
			clear(rows)
		case "delete":
			delete(rows, KeyOf(m.M.Key))
		case "insert", "update", "read":
			prev := rows[KeyOf(m.M.Key)]
			if m.M.OldKey != nil {
				prev = rows[KeyOf(m.M.OldKey)]
				delete(rows, KeyOf(m.M.OldKey))
			}
			row := map[string]json.RawMessage{}
			for _, c := range m.M.Unchanged {
				if v, ok := prev[c]; ok {
					row[c] = v
				}
			}
			for c, v := range m.M.After {
				row[c] = v
			}
			rows[KeyOf(m.M.Key)] = row
		}
	}
	return img
}

// KeyOf renders a key as one comparable string.
func KeyOf(key map[string]json.RawMessage) string {
	names := make([]string, 0, len(key))
	for k := range key {
		names = append(names, k)
	}
	slices.Sort(names)
	var b strings.Builder
	for _, k := range names {
		fmt.Fprintf(&b, "%s=%s;", k, key[k])
	}
	return b.String()
}
