package pipeline

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/decoder"
	"github.com/tandem-migrate/tandem/pkg/dial"
)

// Lag is measured apart from the stream, for the daemon's whole life: a
// poller reads the old database's WAL position every second over its own
// connection, so while the stream is down (the new database lost, a
// retry) the lag still grows with the WAL written meanwhile; and while the
// old database cannot be read at all, lag_seconds grows from the last
// contact with it (a poll or anything on the stream), instead of freezing
// at a value that may say "caught up".

const (
	pollEvery = time.Second
	// pollTimeout bounds a poll, so a silent link cannot freeze it.
	pollTimeout = 10 * time.Second
	// contactFresh is how old the last contact may be before lag counts
	// from it: a few missed polls.
	contactFresh = 3 * pollEvery
)

type walSample struct {
	at  time.Time
	lsn change.LSN
}

// pollSource samples the old database until ctx ends.
func (p *Pipeline) pollSource(ctx context.Context) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			closeConn(conn)
		}
	}()
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		var err error
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, pollTimeout)
			conn, err = dial.Open(cctx, p.cfg.Source.DSN, dial.Short(p.cfg.Name, "poll"))
			cancel()
		}
		if conn != nil {
			qctx, cancel := context.WithTimeout(ctx, pollTimeout)
			var si decoder.SlotInfo
			si, err = decoder.LookupSlot(qctx, conn, p.cfg.Source.Slot)
			cancel()
			if err == nil {
				p.observeSource(time.Now(), si)
			} else {
				closeConn(conn)
				conn = nil
			}
		}
		if err != nil && ctx.Err() == nil {
			p.log.Debug("cannot read the old database's position; lag counts from the last contact", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// reportLag refreshes the lag metrics and readiness every poll period,
// whether or not the poll succeeded.
func (p *Pipeline) reportLag(ctx context.Context) {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		secs, bytes := p.lagAt(time.Now())
		p.m.LagSeconds.Set(secs.Seconds())
		p.m.LagBytes.Set(float64(bytes))
		if d := p.dec.Load(); d != nil {
			p.m.ReceivedLSN.Set(float64(d.Received()))
		}
		p.Health.SetBehind(p.behind(secs))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *Pipeline) behind(lag time.Duration) string {
	bound := p.cfg.Metrics.ReadyMaxLag
	if bound <= 0 || lag <= bound {
		return ""
	}
	return fmt.Sprintf("streaming but %s behind, more than metrics.ready_max_lag (%s)", lag.Round(time.Second), bound)
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	conn.Close(ctx)
}

// observeSource records one poll: the source's position, the slot's
// retained WAL and its state.
func (p *Pipeline) observeSource(now time.Time, si decoder.SlotInfo) {
	p.m.RetainedBytes.Set(float64(si.RetainedBytes))
	p.watchSlot(si)
	p.lagMu.Lock()
	defer p.lagMu.Unlock()
	p.contact = now
	p.current = si.CurrentLSN
	p.samples = append(p.samples, walSample{at: now, lsn: si.CurrentLSN})
	if len(p.samples) > 3600 {
		p.samples = p.samples[len(p.samples)-3600:]
	}
}

// watchSlot warns when the slot nears invalidation, once per change of
// state.
func (p *Pipeline) watchSlot(si decoder.SlotInfo) {
	if si.WALStatus == p.slotStatus {
		return
	}
	prev := p.slotStatus
	p.slotStatus = si.WALStatus
	switch {
	case si.Lost():
		p.log.Error("replication slot lost", "err", si.LostError(p.cfg.Source.Slot))
	case si.WALStatus == "unreserved":
		p.log.Warn("replication slot is unreserved: it holds more WAL than max_slot_wal_keep_size allows, and the old database invalidates it at its next checkpoint unless tandem catches up first; once it is lost the migration must start over. Raise max_slot_wal_keep_size on the old database now, or find why tandem is behind",
			"slot", p.cfg.Source.Slot, "retained_wal_bytes", si.RetainedBytes)
	case prev == "unreserved":
		p.log.Info("replication slot is within max_slot_wal_keep_size again", "slot", p.cfg.Source.Slot, "wal_status", si.WALStatus)
	}
}

// lagAt is the replication lag at now: how long the oldest WAL not yet
// processed has existed, and how many bytes of it there are.
func (p *Pipeline) lagAt(now time.Time) (time.Duration, int64) {
	// The stream counts as contact too: it carries the server's position.
	var heard time.Time
	if d := p.dec.Load(); d != nil {
		heard = d.Heard()
	}
	processed := change.LSN(p.processed.Load())
	p.lagMu.Lock()
	defer p.lagMu.Unlock()
	i := 0
	for i < len(p.samples) && p.samples[i].lsn <= processed {
		i++
	}
	p.samples = p.samples[i:]
	var bytes int64
	if p.current > processed {
		bytes = int64(p.current - processed)
	}
	var lag time.Duration
	// A single sample ahead that is fresh means the lag is under a poll.
	if len(p.samples) > 1 || (len(p.samples) == 1 && now.Sub(p.samples[0].at) > 2*pollEvery) {
		lag = now.Sub(p.samples[0].at)
	}
	contact := p.contact
	if heard.After(contact) {
		contact = heard
	}
	if !contact.IsZero() {
		if quiet := now.Sub(contact); quiet > contactFresh && quiet > lag {
			lag = quiet
		}
	}
	return lag, bytes
}

// Lag is the current replication lag estimate.
func (p *Pipeline) Lag() time.Duration {
	lag, _ := p.lagAt(time.Now())
	return lag
}
