package sink

// JetStream is the second sink: it publishes every change into one NATS
// JetStream stream, exactly once, for the services around a migration.
//
// Exactly once rests on three things. The stream holds one migration's
// messages, published over one connection in commit order, and each
// message carries Nats-Expected-Last-Sequence: the stream sequence of the
// message before it. JetStream stores a message only right after its
// predecessor, so the stream never has a gap: if one publish fails, every
// later one fails too. Where tandem stands in the stream is therefore its
// last message, whose headers name the source transaction and the
// position in it (natsmsg.go); on every start tandem reads it and
// publishes only what comes after, however long it was away. And the
// pipeline confirms the replication slot only to what is acknowledged
// here (Flush) and, with a PostgreSQL target, committed there: what the
// old database sends again after a crash is at or before the stream's
// end, and skipped. Each message also has a deterministic Nats-Msg-Id, so
// a copy sent again within the duplicate window is dropped by JetStream
// itself.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/config"
)

// Out is one message for the stream.
type Out struct {
	Subject   string
	Data      []byte
	CommitLSN change.LSN
	Seq       int
	// Last marks the last message of its transaction; EndLSN is then the
	// transaction's end, durable once this message is acknowledged.
	Last   bool
	EndLSN change.LSN
	// Table and Op label the metrics.
	Table, Op string
}

type inflight struct {
	f    jetstream.PubAckFuture
	seq  uint64
	end  change.LSN
	sent time.Time
}

// JetStream publishes into one stream over one connection.
type JetStream struct {
	nc        *nats.Conn
	js        jetstream.JetStream
	stream    jetstream.Stream
	cfg       config.NATSConfig
	migration string
	log       *slog.Logger
	m         *JetStreamMetrics

	// last is the stream sequence the next message must follow.
	last     uint64
	inflight []inflight
	head     int
	// durable is the end LSN of the last transaction whose messages are
	// all acknowledged; acked is the stream sequence of the last message
	// acknowledged with all before it.
	durable change.LSN
	acked   uint64
}

// OpenJetStream connects, finds the stream (creating it when
// nats.create_stream says so) and checks it can hold this migration's
// subjects. Resume must be called before the first Publish.
func OpenJetStream(ctx context.Context, cfg config.NATSConfig, migration string, log *slog.Logger, m *JetStreamMetrics) (*JetStream, error) {
	nc, err := ConnectNATS(ctx, cfg, migration, "publish", log)
	if err != nil {
		return nil, err
	}
	s := &JetStream{nc: nc, cfg: cfg, migration: migration, log: log, m: m}
	// tandem bounds the acks in flight itself (Publish); the client's own
	// bound is set above it so that it never stalls a publish first.
	s.js, err = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(cfg.MaxPending+1), jetstream.WithPublishAsyncTimeout(cfg.AckTimeout))
	if err == nil {
		s.stream, _, err = EnsureStream(ctx, s.js, cfg)
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	if m != nil {
		m.Connected.Set(1)
	}
	return s, nil
}

// Close ends the connection; messages not acknowledged by then are
// published again by the next attempt, after Resume.
func (s *JetStream) Close() {
	if s == nil {
		return
	}
	s.nc.Close()
	if s.m != nil {
		s.m.Connected.Set(0)
		s.m.Pending.Set(0)
	}
}

// EnsureStream finds cfg's stream, or creates it with cfg's settings when
// cfg.CreateStream is set, and checks that it takes the migration's
// subjects. created says whether it was made now.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg config.NATSConfig) (st jetstream.Stream, created bool, err error) {
	st, err = js.Stream(ctx, cfg.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound) && cfg.CreateStream:
		st, err = js.CreateStream(ctx, StreamConfig(cfg))
		if err != nil {
			return nil, false, &StreamError{Err: fmt.Errorf("nats.stream: create stream %s: %w", cfg.Stream, err)}
		}
		created = true
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, false, &StreamError{Err: fmt.Errorf("nats.stream: stream %s does not exist on the server: set nats.create_stream: true, or create it with subjects %s.>", cfg.Stream, cfg.Subject)}
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return nil, false, &StreamError{Err: fmt.Errorf("nats.url: JetStream is not enabled on the server (or for this account): start nats-server with -js, or enable it for the account")}
	case err != nil:
		return nil, false, &StreamError{Retry: true, Err: fmt.Errorf("nats.stream: look up stream %s: %w", cfg.Stream, err)}
	}
	sc := st.CachedInfo().Config
	want := cfg.Subject + ".>"
	covered := false
	for _, sub := range sc.Subjects {
		covered = covered || SubjectCovers(sub, want)
	}
	if !covered {
		return nil, false, &StreamError{Err: fmt.Errorf("nats.subject: stream %s takes subjects %s, which do not cover %s: add it to the stream, or set nats.subject to a prefix it takes", cfg.Stream, strings.Join(sc.Subjects, ", "), want)}
	}
	if sc.Sealed || sc.Mirror != nil {
		return nil, false, &StreamError{Err: fmt.Errorf("nats.stream: stream %s is sealed or a mirror and takes no publishes: use another stream", cfg.Stream)}
	}
	return st, created, nil
}

// StreamConfig is the stream tandem creates for cfg.
func StreamConfig(cfg config.NATSConfig) jetstream.StreamConfig {
	sc := jetstream.StreamConfig{
		Name:        cfg.Stream,
		Description: "changes published by tandem",
		Subjects:    []string{cfg.Subject + ".>"},
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		MaxAge:      cfg.MaxAge,
		MaxBytes:    cfg.MaxBytes,
		Duplicates:  cfg.DuplicateWindow,
		AllowDirect: true,
	}
	if cfg.MaxBytes == 0 {
		sc.MaxBytes = -1
	}
	switch cfg.Retention {
	case "interest":
		sc.Retention = jetstream.InterestPolicy
	case "workqueue":
		sc.Retention = jetstream.WorkQueuePolicy
	default:
		sc.Retention = jetstream.LimitsPolicy
	}
	if cfg.Discard == "old" {
		sc.Discard = jetstream.DiscardOld
	} else {
		sc.Discard = jetstream.DiscardNew
	}
	return sc
}

// SubjectCovers reports whether every subject matching want also matches
// pattern (NATS wildcards: * one token, > the rest).
func SubjectCovers(pattern, want string) bool {
	p, w := strings.Split(pattern, "."), strings.Split(want, ".")
	for i, t := range p {
		switch {
		case t == ">":
			return i < len(w)
		case i >= len(w):
			return false
		case w[i] == ">":
			return false
		case t == "*" && w[i] != "*":
		case t != w[i]:
			return false
		}
	}
	return len(p) == len(w)
}

// lastPlaceLookback bounds how many deleted messages Resume steps over to
// find the last one still stored.
const lastPlaceLookback = 1000

// Resume reads where this migration stands in the stream: the place of
// its last message. ok is false when the stream holds none (a new
// stream, or one whose messages all expired: see README). The next
// Publish follows the stream's last sequence.
func (s *JetStream) Resume(ctx context.Context) (p Place, ok bool, err error) {
	info, err := s.stream.Info(ctx)
	if err != nil {
		return p, false, &StreamError{Retry: true, Err: fmt.Errorf("nats: read stream %s: %w", s.cfg.Stream, err)}
	}
	s.last, s.acked = info.State.LastSeq, info.State.LastSeq
	s.inflight, s.head, s.durable = s.inflight[:0], 0, 0
	p, ok, err = LastPlace(ctx, s.stream, info.State, s.migration)
	if ok {
		if s.m != nil {
			s.m.StreamLSN.Set(float64(p.CommitLSN))
		}
	}
	return p, ok, err
}

// LastPlace finds the newest message of migration still stored in st.
func LastPlace(ctx context.Context, st jetstream.Stream, state jetstream.StreamState, migration string) (Place, bool, error) {
	for seq := state.LastSeq; seq >= max(state.FirstSeq, 1) && state.LastSeq-seq < lastPlaceLookback; seq-- {
		msg, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return Place{}, false, &StreamError{Retry: true, Err: fmt.Errorf("nats: read message %d of stream %s: %w", seq, st.CachedInfo().Config.Name, err)}
		}
		p, err := ParsePlace(msg.Header)
		if err == nil && p.Migration != migration {
			err = fmt.Errorf("published by migration %q", p.Migration)
		}
		if err != nil {
			return Place{}, false, &StreamError{Err: fmt.Errorf("nats.stream: the last message of stream %s (sequence %d, subject %s) is not this migration's (%v): tandem resumes from its own last message and needs a stream of its own; set nats.stream to another name", st.CachedInfo().Config.Name, seq, msg.Subject, err)}
		}
		return p, true, nil
	}
	return Place{}, false, nil
}

// Publish sends one message without waiting for its PubAck, after
// waiting for the oldest while nats.max_pending are in flight.
func (s *JetStream) Publish(ctx context.Context, o Out) error {
	for len(s.inflight)-s.head >= s.cfg.MaxPending {
		if err := s.waitOne(ctx); err != nil {
			return err
		}
	}
	h := nats.Header{}
	h.Set(HeaderMigration, s.migration)
	h.Set(HeaderCommitLSN, o.CommitLSN.String())
	h.Set(HeaderSeq, strconv.Itoa(o.Seq))
	end := change.LSN(0)
	if o.Last {
		h.Set(HeaderLast, "true")
		h.Set(HeaderEndLSN, o.EndLSN.String())
		end = o.EndLSN
	}
	msg := &nats.Msg{Subject: o.Subject, Data: o.Data, Header: h}
	f, err := s.js.PublishMsgAsync(msg, jetstream.WithMsgID(MsgID(s.migration, o.CommitLSN, o.Seq)),
		jetstream.WithExpectLastSequence(s.last), jetstream.WithExpectStream(s.cfg.Stream))
	if err != nil {
		return s.failed(fmt.Errorf("nats: publish to %s: %w", o.Subject, err))
	}
	s.last++
	s.inflight = append(s.inflight, inflight{f: f, seq: s.last, end: end, sent: time.Now()})
	if s.m != nil {
		s.m.Published.WithLabelValues(o.Table, o.Op).Inc()
		s.m.Pending.Set(float64(len(s.inflight) - s.head))
	}
	return nil
}

// Flush waits for every PubAck and returns the end LSN of the last
// transaction now wholly in the stream (0 if none was published).
func (s *JetStream) Flush(ctx context.Context) (change.LSN, error) {
	for s.head < len(s.inflight) {
		if err := s.waitOne(ctx); err != nil {
			return s.durable, err
		}
	}
	s.inflight, s.head = s.inflight[:0], 0
	return s.durable, nil
}

// Sent is the stream sequence of the last message published.
func (s *JetStream) Sent() uint64 { return s.last }

// Poll takes the PubAcks that have arrived, without waiting, and returns
// the stream sequence up to which every message is acknowledged.
func (s *JetStream) Poll(ctx context.Context) (uint64, error) {
	for s.head < len(s.inflight) {
		took, err := s.next(ctx, false)
		if err != nil || !took {
			return s.acked, err
		}
	}
	s.inflight, s.head = s.inflight[:0], 0
	return s.acked, nil
}

func (s *JetStream) waitOne(ctx context.Context) error {
	_, err := s.next(ctx, true)
	return err
}

// next takes the oldest message's PubAck, waiting for it with block;
// without, took is false when it has not arrived.
func (s *JetStream) next(ctx context.Context, block bool) (took bool, err error) {
	p := s.inflight[s.head]
	var ack *jetstream.PubAck
	if block {
		// The client times the ack out itself (nats.ack_timeout); this
		// one only guards against a future that is never resolved.
		t := time.NewTimer(s.cfg.AckTimeout + time.Second)
		defer t.Stop()
		select {
		case ack = <-p.f.Ok():
		case err = <-p.f.Err():
		case <-t.C:
			return false, s.failed(fmt.Errorf("nats: no PubAck from stream %s within %s (nats.ack_timeout): the server is unreachable or slow; tandem retries from its checkpoint", s.cfg.Stream, s.cfg.AckTimeout))
		case <-ctx.Done():
			return false, ctx.Err()
		}
	} else {
		select {
		case ack = <-p.f.Ok():
		case err = <-p.f.Err():
		default:
			return false, nil
		}
	}
	if err != nil {
		return false, s.failed(publishError(s.cfg, p.f.Msg().Subject, err))
	}
	if ack.Sequence != p.seq {
		return false, s.failed(fmt.Errorf("nats: stream %s stored a message at sequence %d where tandem expected %d: something else publishes into it; give this migration a stream of its own (nats.stream)", s.cfg.Stream, ack.Sequence, p.seq))
	}
	s.head++
	s.acked = p.seq
	if p.end != 0 {
		s.durable = p.end
	}
	if s.m != nil {
		s.m.Acks.Inc()
		s.m.AckSeconds.Observe(time.Since(p.sent).Seconds())
		s.m.Pending.Set(float64(len(s.inflight) - s.head))
		if p.end != 0 {
			s.m.StreamLSN.Set(float64(p.end))
		}
	}
	return true, nil
}

// failed counts an error and marks it for a retry from the checkpoint:
// every failure of a publish is one the next attempt may not meet (a
// server back, a stream with room again).
func (s *JetStream) failed(err error) error {
	if s.m != nil {
		s.m.Errors.Inc()
	}
	var se *StreamError
	if errors.As(err, &se) {
		return err
	}
	return &StreamError{Retry: true, Err: err}
}

// JetStream's error codes for a full stream and a broken chain.
const (
	jsErrStreamStoreFailed   = 10077
	jsErrWrongLastSequence   = 10071
	streamFullMessagePattern = "maximum"
)

func publishError(cfg config.NATSConfig, subject string, err error) error {
	var apiErr *jetstream.APIError
	switch {
	case errors.As(err, &apiErr) && (apiErr.ErrorCode == jsErrStreamStoreFailed || strings.Contains(apiErr.Description, streamFullMessagePattern)):
		return fmt.Errorf("nats: stream %s is full (%s): tandem waits and retries, losing nothing; raise its limits (nats.max_bytes), let consumers catch up, or use discard old: %w", cfg.Stream, apiErr.Description, err)
	case errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrWrongLastSequence:
		return fmt.Errorf("nats: stream %s refused a message on %s out of sequence (an earlier one failed, or something else publishes into the stream); resuming from the stream's last message: %w", cfg.Stream, subject, err)
	}
	return fmt.Errorf("nats: publish to %s in stream %s: %w", subject, cfg.Stream, err)
}

// DeleteStream removes cfg's stream and every message in it (teardown
// --delete-stream); false when there was none.
func DeleteStream(ctx context.Context, cfg config.NATSConfig, migration string, log *slog.Logger) (bool, error) {
	nc, err := ConnectNATS(ctx, cfg, migration, "teardown", log)
	if err != nil {
		return false, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return false, err
	}
	err = js.DeleteStream(ctx, cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("nats: delete stream %s: %w", cfg.Stream, err)
	}
	return true, nil
}
