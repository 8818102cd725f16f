// Package lifecycle records where a migration stands — streaming forward,
// cutting over, cut over (streaming back), rolling back — in one row on
// the new database, and makes `tandem run` follow it: after cutover the
// daemon streams new -> old through the inverse mapping, without anyone
// starting another process. The ceremonies that move a migration between
// phases are in pkg/cutover; this package only stores and follows.
package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/checkpoint"
)

// Phase is where a migration stands.
type Phase string

const (
	// Forward: the old database is authoritative; tandem streams old -> new.
	Forward Phase = "forward"
	// CuttingOver: the old database is fenced; the cutover has not yet
	// declared the new one ready.
	CuttingOver Phase = "cutting_over"
	// CutOver: the new database is authoritative; tandem streams new -> old.
	CutOver Phase = "cutover"
	// RollingBack: the new database is fenced; the rollback has not yet
	// handed writes back to the old one.
	RollingBack Phase = "rolling_back"
)

// Phases lists every phase, for the tandem_phase metric.
var Phases = []Phase{Forward, CuttingOver, CutOver, RollingBack}

// Reversed reports whether the reverse stream runs in this phase.
func (p Phase) Reversed() bool { return p == CutOver || p == RollingBack }

// Step is one timed step of the last ceremony.
type Step struct {
	Name    string        `json:"name"`
	At      time.Time     `json:"at"`
	Took    time.Duration `json:"took_ns"`
	Outcome string        `json:"outcome"`
}

// State is the migration's lifecycle row.
type State struct {
	Phase Phase
	// Attempt counts cutovers started (a rollback makes room for another).
	Attempt int
	// FencedOld and FencedNew say which database tandem made read-only,
	// so abort, rollback and teardown lift exactly what tandem set.
	FencedOld, FencedNew bool
	// FencedAt is when the current ceremony's fence went up; the write
	// unavailability counts from it, across a resumed ceremony.
	FencedAt time.Time
	// FenceLSN is the marker the current ceremony waits for.
	FenceLSN change.LSN
	// Unavailable is the last finished ceremony's fence-to-ready time.
	Unavailable time.Duration
	Changed     time.Time
	Steps       []Step
	// exists is false before the first save.
	exists bool
}

// EnsureTable creates tandem.lifecycle on the new database. Idempotent.
func EnsureTable(ctx context.Context, q catalog.Querier) error {
	if err := checkpoint.EnsureSchema(ctx, q); err != nil {
		return err
	}
	_, err := q.Exec(ctx, `CREATE TABLE IF NOT EXISTS tandem.lifecycle (
	name        text PRIMARY KEY,
	phase       text NOT NULL,
	attempt     int NOT NULL,
	fenced_old  boolean NOT NULL,
	fenced_new  boolean NOT NULL,
	fenced_at   timestamptz,
	fence_lsn   pg_lsn,
	unavailable_ms double precision,
	changed_at  timestamptz NOT NULL,
	steps       jsonb NOT NULL
)`)
	if err != nil {
		return fmt.Errorf("create tandem.lifecycle on the new database: %w", err)
	}
	return nil
}

// Load reads the state; a migration never cut over is Forward.
func Load(ctx context.Context, q catalog.Querier, name string) (State, error) {
	s := State{Phase: Forward, Attempt: 0}
	var fencedAt *time.Time
	var lsn *change.LSN
	var unavailable *float64
	var steps []byte
	err := q.QueryRow(ctx, `SELECT phase, attempt, fenced_old, fenced_new, fenced_at, fence_lsn, unavailable_ms, changed_at, steps
		FROM tandem.lifecycle WHERE name = $1`, name).Scan(&s.Phase, &s.Attempt, &s.FencedOld, &s.FencedNew, &fencedAt, &lsn, &unavailable, &s.Changed, &steps)
	if errors.Is(err, pgx.ErrNoRows) || checkpoint.Missing(err) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("read the migration's phase (tandem.lifecycle) on the new database: %w", err)
	}
	s.exists = true
	if fencedAt != nil {
		s.FencedAt = *fencedAt
	}
	if lsn != nil {
		s.FenceLSN = *lsn
	}
	if unavailable != nil {
		s.Unavailable = time.Duration(*unavailable * float64(time.Millisecond))
	}
	if err := json.Unmarshal(steps, &s.Steps); err != nil {
		return s, fmt.Errorf("tandem.lifecycle steps of %s: %w", name, err)
	}
	switch s.Phase {
	case Forward, CuttingOver, CutOver, RollingBack:
	default:
		return s, fmt.Errorf("tandem.lifecycle says %s is in phase %q, which this tandem does not know: run the tandem version that wrote it", name, s.Phase)
	}
	return s, nil
}

// Save writes the state; the ceremonies save after every step, so a
// killed one resumes where it stopped.
func Save(ctx context.Context, q catalog.Querier, name string, s *State) error {
	steps, err := json.Marshal(s.Steps)
	if err != nil {
		return err
	}
	var fencedAt *time.Time
	if !s.FencedAt.IsZero() {
		fencedAt = &s.FencedAt
	}
	var lsn *string
	if s.FenceLSN != 0 {
		l := s.FenceLSN.String()
		lsn = &l
	}
	var unavailable *float64
	if s.Unavailable > 0 {
		ms := float64(s.Unavailable) / float64(time.Millisecond)
		unavailable = &ms
	}
	s.Changed = time.Now()
	_, err = q.Exec(ctx, `INSERT INTO tandem.lifecycle (name, phase, attempt, fenced_old, fenced_new, fenced_at, fence_lsn, unavailable_ms, changed_at, steps)
		VALUES ($1, $2, $3, $4, $5, $6, $7::text::pg_lsn, $8, $9, $10)
		ON CONFLICT (name) DO UPDATE SET phase = excluded.phase, attempt = excluded.attempt, fenced_old = excluded.fenced_old,
			fenced_new = excluded.fenced_new, fenced_at = excluded.fenced_at, fence_lsn = excluded.fence_lsn,
			unavailable_ms = excluded.unavailable_ms, changed_at = excluded.changed_at, steps = excluded.steps`,
		name, string(s.Phase), s.Attempt, s.FencedOld, s.FencedNew, fencedAt, lsn, unavailable, s.Changed, steps)
	if err != nil {
		return fmt.Errorf("record phase %s on the new database: %w", s.Phase, err)
	}
	s.exists = true
	return nil
}

// Delete removes the row (teardown).
func Delete(ctx context.Context, q catalog.Querier, name string) (bool, error) {
	tag, err := q.Exec(ctx, `DELETE FROM tandem.lifecycle WHERE name = $1`, name)
	if checkpoint.Missing(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("delete tandem.lifecycle row: %w", err)
	}
	return tag.RowsAffected() > 0, nil
}
