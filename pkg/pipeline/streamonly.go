package pipeline

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/decoder"
	"github.com/tandem-migrate/tandem/pkg/dial"
	"github.com/tandem-migrate/tandem/pkg/sink"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

// A migration whose only target is the stream (target.dsn empty): the
// old database's changes are published in their old shape, and the
// stream is the checkpoint. The slot is confirmed only to transactions
// whose messages are all acknowledged, so on a start the stream's last
// message, or the slot's position when that is further, is where to
// resume; transactions the old database sends again up to the stream's
// end are skipped.

// inMigration marks a relation of a configured table in byOID; the old
// shape needs no mapping.
var inMigration = []*transform.Mapping{nil}

func (p *Pipeline) runStreamOnly(parent context.Context) error {
	cfg := p.cfg
	ctx, cancelSetup := context.WithTimeout(parent, p.setupTimeout())
	defer cancelSetup()
	src, err := connect(ctx, cfg.Source.DSN, "source", dial.Short(cfg.Name, "source"))
	if err != nil {
		return err
	}
	defer closeConn(src)
	slot, err := p.ensureSlot(ctx, parent, src)
	if err != nil {
		return err
	}
	log := p.base.With("component", "jetstream")
	js, err := sink.OpenJetStream(ctx, cfg.NATS, cfg.Name, log, p.jsm)
	if err != nil {
		return streamErr(err)
	}
	pub := newPublisher(cfg, log, js, src)
	defer pub.close()
	if err := pub.resume(ctx, slot.ConfirmedFlush); err != nil {
		return err
	}
	start := slot.ConfirmedFlush
	if pub.placed && pub.place.Last && pub.place.EndLSN > start {
		start = pub.place.EndLSN
	}
	p.processed.Store(uint64(start))
	p.m.CheckpointLSN.Set(float64(start))

	dec, leave := p.newDecoder()
	defer leave()
	events := make(chan change.Event, 16384)
	cancelSetup()
	pubBeat := p.Health.Live.Join("publisher")
	defer pubBeat.Leave()
	loop := &streamLoop{p: p, pub: pub, dec: dec, beat: pubBeat.Beat, settled: p.attempt.settle(&p.Health, p.m), configured: map[string]bool{}}
	for _, t := range SourceTables(cfg) {
		loop.configured[t] = true
	}
	g, gctx := errgroup.WithContext(parent)
	g.Go(func() error { return dec.Run(gctx, start, events) })
	g.Go(func() error { return loop.run(gctx, events) })
	p.beat.Leave()
	defer func() { p.beat = p.Health.Live.Join("pipeline") }()
	return g.Wait()
}

// newDecoder is an attempt's decoder, its liveness beat joined until
// leave.
func (p *Pipeline) newDecoder() (dec *decoder.Decoder, leave func()) {
	cfg := p.cfg
	beat := p.Health.Live.Join("decoder")
	dec = decoder.New(decoder.Options{DSN: cfg.Source.DSN, Migration: cfg.Name, Slot: cfg.Source.Slot, Publication: cfg.Source.Publication,
		StatusInterval: 2 * time.Second, ReceiveTimeout: cfg.Source.ReceiveTimeout, Beat: beat.Beat, Log: p.base.With("component", "decoder")})
	p.dec.Store(dec)
	return dec, beat.Leave
}

// ensureSlot makes sure the publication and the slot exist, as an
// attempt of runOnce does, and returns the slot.
func (p *Pipeline) ensureSlot(ctx, parent context.Context, src *pgx.Conn) (decoder.SlotInfo, error) {
	cfg := p.cfg
	if err := decoder.EnsurePublication(ctx, src, cfg.Source.Publication, SourceTables(cfg), *cfg.Source.CreatePublication); err != nil {
		if Retryable(err) {
			return decoder.SlotInfo{}, err
		}
		return decoder.SlotInfo{}, &FatalError{Err: err}
	}
	slot, err := decoder.LookupSlot(ctx, src, cfg.Source.Slot)
	if err != nil {
		return slot, err
	}
	if err := decoder.CheckSlot(slot, cfg.Source.Slot); err != nil {
		return slot, &FatalError{Err: err}
	}
	if slot.Exists {
		p.streamed = true
		return slot, nil
	}
	if p.streamed {
		return slot, &FatalError{Err: fmt.Errorf("replication slot %s disappeared while tandem was running (dropped by teardown or by hand?); the changes since the stream's last message are gone from the source: start over rather than resume", cfg.Source.Slot)}
	}
	p.beat.Leave()
	p.log.Info("creating replication slot; it is ready once the transactions running on the old database have ended", "slot", cfg.Source.Slot)
	cctx, cancel := context.WithTimeout(parent, time.Hour)
	slot, err = decoder.CreateSlot(cctx, src, cfg.Source.Slot)
	cancel()
	p.beat = p.Health.Live.Join("pipeline")
	if err == nil {
		p.streamed = true
	}
	return slot, err
}

// streamLoop publishes the decoded stream and confirms the slot behind
// the PubAcks, without waiting for them: each transaction's end becomes
// confirmable once the last message published before it is acknowledged.
type streamLoop struct {
	p          *Pipeline
	pub        *publisher
	dec        *decoder.Decoder
	beat       func()
	settled    func(work bool)
	configured map[string]bool
	byOID      map[uint32][]*transform.Mapping
	inTx       bool
	// marks are transaction ends waiting for their messages' PubAcks, in
	// commit order.
	marks   []txMark
	changes int
}

// txMark is a transaction end and the stream sequence of the last message
// published at or before it.
type txMark struct {
	end change.LSN
	seq uint64
}

func (l *streamLoop) run(ctx context.Context, events <-chan change.Event) error {
	l.byOID = map[uint32][]*transform.Mapping{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			l.beat()
		case ev := <-events:
			if err := l.handle(ctx, ev); err != nil {
				return err
			}
		}
		if err := l.confirm(ctx); err != nil {
			return err
		}
	}
}

func (l *streamLoop) handle(ctx context.Context, ev change.Event) error {
	if err := l.pub.observe(ctx, ev); err != nil {
		return err
	}
	switch e := ev.(type) {
	case *change.Begin:
		l.inTx = true
	case *change.Relation:
		if l.configured[e.QualifiedName()] {
			l.byOID[e.OID] = inMigration
		} else {
			delete(l.byOID, e.OID)
		}
	case *change.Change:
		l.changes++
		return l.pub.change(ctx, e, l.byOID)
	case *change.Commit:
		l.inTx = false
		// The old shape needs no query: publish the transaction now.
		if err := l.pub.flush(ctx); err != nil {
			return err
		}
		m := txMark{end: e.EndLSN, seq: l.pub.js.Sent()}
		if n := len(l.marks); n > 0 && l.marks[n-1].seq == m.seq {
			l.marks[n-1] = m // nothing published in between
		} else {
			l.marks = append(l.marks, m)
		}
	case change.Idle:
		if len(l.marks) == 0 && !l.inTx && e.WALEnd > l.dec.Flushed() {
			// Nothing of ours is in flight: the slot may move past WAL
			// that holds nothing for this migration.
			l.settled(false)
			l.dec.SetFlushed(e.WALEnd)
			l.p.markProcessed(e.WALEnd)
		}
	}
	return nil
}

// confirm takes the PubAcks that have arrived and confirms the slot to
// the last transaction whose messages they cover.
func (l *streamLoop) confirm(ctx context.Context) error {
	if len(l.marks) == 0 {
		return nil
	}
	acked, err := l.pub.js.Poll(ctx)
	if err != nil {
		return streamErr(err)
	}
	n := 0
	for n < len(l.marks) && l.marks[n].seq <= acked {
		n++
	}
	if n == 0 {
		return nil
	}
	lsn := l.marks[n-1].end
	l.marks = append(l.marks[:0], l.marks[n:]...)
	l.settled(l.changes > 0)
	l.changes = 0
	l.dec.SetFlushed(lsn)
	l.p.markProcessed(lsn)
	l.p.m.CheckpointLSN.Set(float64(lsn))
	return nil
}
