// Package status gathers what an operator asks first: is the stream
// keeping up, how much WAL is the slot holding, and how far is the copy.
package status

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/checkpoint"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/decoder"
	"github.com/tandem-migrate/tandem/pkg/dial"
	"github.com/tandem-migrate/tandem/pkg/lifecycle"
	"github.com/tandem-migrate/tandem/pkg/pipeline"
)

// Report is the status of one migration.
type Report struct {
	Migration     string `json:"migration"`
	Slot          string `json:"slot"`
	SlotExists    bool   `json:"slot_exists"`
	SlotActive    bool   `json:"slot_active"`
	ConfirmedLSN  string `json:"confirmed_lsn,omitempty"`
	RetainedBytes int64  `json:"slot_retained_wal_bytes"`
	// WALStatus and SafeWALBytes say how close the slot is to being
	// invalidated by max_slot_wal_keep_size (SafeWALBytes is absent when
	// there is no such limit); SlotLost explains an invalidated slot.
	WALStatus     string `json:"slot_wal_status,omitempty"`
	SafeWALBytes  *int64 `json:"slot_safe_wal_bytes,omitempty"`
	SlotLost      string `json:"slot_lost,omitempty"`
	CheckpointLSN string `json:"checkpoint_lsn,omitempty"`
	LagBytes      int64  `json:"lag_bytes"`
	// LagSeconds is the running daemon's own figure (lag.go); absent when
	// its metrics endpoint does not answer.
	LagSeconds *float64     `json:"lag_seconds,omitempty"`
	Tables     []TableState `json:"tables"`
	Phase      PhaseState   `json:"phase"`
	// StreamOnly is a migration that publishes to NATS and has no new
	// database.
	StreamOnly bool `json:"stream_only,omitempty"`
	current    change.LSN
}

// PhaseState is where the migration stands in its lifecycle.
type PhaseState struct {
	Phase     string     `json:"phase"`
	Attempt   int        `json:"attempt"`
	Since     *time.Time `json:"since,omitempty"`
	FencedOld bool       `json:"fenced_old"`
	FencedNew bool       `json:"fenced_new"`
	// UnavailableSeconds is the last ceremony's fence-to-ready time.
	UnavailableSeconds float64          `json:"write_unavailable_seconds,omitempty"`
	Steps              []lifecycle.Step `json:"steps,omitempty"`
	// Reverse describes the new -> old stream after cutover.
	ReverseSlot          string `json:"reverse_slot"`
	ReverseSlotExists    bool   `json:"reverse_slot_exists"`
	ReverseSlotActive    bool   `json:"reverse_slot_active"`
	ReverseCheckpointLSN string `json:"reverse_checkpoint_lsn,omitempty"`
	ReverseLagBytes      int64  `json:"reverse_lag_bytes"`
}

// TableState is one mapping's backfill progress.
type TableState struct {
	Source        string  `json:"source"`
	Target        string  `json:"target"`
	RowsCopied    int64   `json:"rows_copied"`
	EstimatedRows int64   `json:"estimated_rows"`
	Percent       float64 `json:"percent"`
	RowsPerSecond float64 `json:"rows_per_second"`
	ETASeconds    float64 `json:"eta_seconds"`
	Done          bool    `json:"done"`
	Started       bool    `json:"started"`
}

// Gather reads the status from both databases; it writes nothing.
func Gather(ctx context.Context, cfg *config.Config) (*Report, error) {
	src, err := dial.Open(ctx, cfg.Source.DSN, dial.Short(cfg.Name, "status"))
	if err != nil {
		return nil, fmt.Errorf("source.dsn: cannot connect to the old database: %w", err)
	}
	defer src.Close(context.Background())
	r := &Report{Migration: cfg.Name, Slot: cfg.Source.Slot, StreamOnly: cfg.StreamOnly()}
	if r.StreamOnly {
		// No new database: the slot's confirmed position is what the
		// stream holds durably (tandem tail shows the messages).
		return r, r.gatherSlot(ctx, cfg, src)
	}
	tgt, err := dial.Open(ctx, cfg.Target.DSN, dial.Short(cfg.Name, "status"))
	if err != nil {
		return nil, fmt.Errorf("target.dsn: cannot connect to the new database: %w", err)
	}
	defer tgt.Close(context.Background())
	if err := r.gatherSlot(ctx, cfg, src); err != nil {
		return nil, err
	}

	lsn, ok, err := checkpoint.ForConfig(cfg, tgt).Load(ctx)
	if err != nil && !checkpoint.Missing(err) {
		return nil, err
	}
	if ok {
		r.CheckpointLSN = lsn.String()
		if r.current > lsn {
			r.LagBytes = int64(r.current - lsn)
		}
	}
	saved, err := checkpoint.LoadProgress(ctx, tgt, cfg.Name)
	if err != nil {
		return nil, err
	}
	progress := map[string]TableState{}
	for key, p := range saved {
		ts := TableState{Source: p.Source, Target: p.Target, RowsCopied: p.RowsCopied, Done: p.Done, Started: true}
		if p.Seconds > 0 {
			ts.RowsPerSecond = float64(p.RowsCopied) / p.Seconds
		}
		progress[key] = ts
	}
	for _, tc := range cfg.Tables {
		ts, ok := progress[checkpoint.MappingKey(tc.Source, tc.Target)]
		if !ok {
			ts = TableState{Source: tc.Source, Target: tc.Target}
		}
		s, n, _ := config.SplitQualified(tc.Source)
		if t, err := catalog.Load(ctx, src, s, n); err == nil {
			ts.EstimatedRows = t.EstimatedRows
		}
		switch {
		case ts.Done:
			ts.Percent = 100
		case ts.EstimatedRows > 0:
			ts.Percent = min(99.9, 100*float64(ts.RowsCopied)/float64(ts.EstimatedRows))
			if ts.RowsPerSecond > 0 {
				ts.ETASeconds = max(0, float64(ts.EstimatedRows-ts.RowsCopied)/ts.RowsPerSecond)
			}
		}
		r.Tables = append(r.Tables, ts)
	}
	if secs, ok := daemonLagSeconds(ctx, cfg.Metrics.Listen); ok {
		r.LagSeconds = &secs
	}
	if err := r.gatherPhase(ctx, cfg, src, tgt); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Report) gatherPhase(ctx context.Context, cfg *config.Config, old, new *pgx.Conn) error {
	st, err := lifecycle.Load(ctx, new, cfg.Name)
	if err != nil {
		return err
	}
	r.Phase = PhaseState{Phase: string(st.Phase), Attempt: st.Attempt, FencedOld: st.FencedOld, FencedNew: st.FencedNew,
		UnavailableSeconds: st.Unavailable.Seconds(), Steps: st.Steps, ReverseSlot: cfg.Reverse.Slot}
	if !st.Changed.IsZero() {
		r.Phase.Since = &st.Changed
	}
	si, err := decoder.LookupSlot(ctx, new, cfg.Reverse.Slot)
	if err != nil {
		return err
	}
	r.Phase.ReverseSlotExists, r.Phase.ReverseSlotActive = si.Exists, si.Active
	if !si.Exists {
		return nil
	}
	lsn, ok, err := checkpoint.ForConfig(pipeline.ReverseBase(cfg), old).Load(ctx)
	if err != nil && !checkpoint.Missing(err) {
		return err
	}
	if ok {
		r.Phase.ReverseCheckpointLSN = lsn.String()
		if si.CurrentLSN > lsn {
			r.Phase.ReverseLagBytes = int64(si.CurrentLSN - lsn)
		}
	}
	return nil
}

// gatherSlot reads the slot and the source position.
func (r *Report) gatherSlot(ctx context.Context, cfg *config.Config, src *pgx.Conn) error {
	si, err := decoder.LookupSlot(ctx, src, cfg.Source.Slot)
	if err != nil {
		return err
	}
	r.SlotExists, r.SlotActive, r.RetainedBytes = si.Exists, si.Active, si.RetainedBytes
	r.WALStatus, r.SafeWALBytes = si.WALStatus, si.SafeWALSize
	if err := si.LostError(cfg.Source.Slot); err != nil {
		r.SlotLost = err.Error()
	}
	if si.Exists {
		r.ConfirmedLSN = si.ConfirmedFlush.String()
	}
	var cur change.LSN
	if err := src.QueryRow(ctx, `SELECT pg_current_wal_lsn()`).Scan(&cur); err != nil {
		return fmt.Errorf("source position: %w", err)
	}
	r.current = cur
	return nil
}

// Text writes the report for people.
func (r *Report) Text(w io.Writer) {
	slot := "missing (run `tandem run` to create it)"
	if r.SlotExists {
		state := "inactive (tandem not running?)"
		if r.SlotActive {
			state = "active"
		}
		slot = fmt.Sprintf("%s, confirmed %s, holding %s of WAL%s", state, r.ConfirmedLSN, bytesText(r.RetainedBytes), r.walBudget())
	}
	if r.SlotLost != "" {
		slot = "LOST: " + r.SlotLost
	}
	if r.StreamOnly {
		fmt.Fprintf(w, "migration %s publishes to NATS only (no new database)\n  slot %s: %s\n  the slot is confirmed only to what the stream holds; tandem tail shows the messages\n", r.Migration, r.Slot, slot)
		return
	}
	fmt.Fprintf(w, "migration %s\n  phase %s%s\n  slot %s: %s\n", r.Migration, r.Phase.Phase, r.Phase.detail(), r.Slot, slot)
	if r.CheckpointLSN != "" {
		lag := ""
		if r.LagSeconds != nil {
			lag = fmt.Sprintf(" (lag %s, from tandem's metrics)", (time.Duration(*r.LagSeconds * float64(time.Second))).Round(100*time.Millisecond))
		}
		fmt.Fprintf(w, "  checkpoint %s, %s behind the source%s\n", r.CheckpointLSN, bytesText(r.LagBytes), lag)
	} else {
		fmt.Fprintf(w, "  no checkpoint yet\n")
	}
	if r.Phase.ReverseSlotExists {
		fmt.Fprintf(w, "  reverse slot %s (new -> old): active %v, reverse checkpoint %s, %s behind the new database\n",
			r.Phase.ReverseSlot, r.Phase.ReverseSlotActive, r.Phase.ReverseCheckpointLSN, bytesText(r.Phase.ReverseLagBytes))
	}
	for _, st := range r.Phase.Steps {
		fmt.Fprintf(w, "    %s  %-34s %10s  %s\n", st.At.Format("15:04:05.000"), st.Name, st.Took.Round(100*time.Microsecond), st.Outcome)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nTABLE\tCOPIED\tESTIMATED\tPROGRESS\tRATE\tETA")
	for _, t := range r.Tables {
		state, eta := fmt.Sprintf("%5.1f%% %s", t.Percent, bar(t.Percent)), "-"
		switch {
		case t.Done:
			state = "done   " + bar(100)
		case !t.Started:
			state = "pending"
		case t.ETASeconds > 0:
			eta = (time.Duration(t.ETASeconds) * time.Second).String()
		}
		// A table copied in one chunk has no elapsed time to divide by.
		rate := "-"
		if t.RowsPerSecond > 0 {
			rate = fmt.Sprintf("%.0f rows/s", t.RowsPerSecond)
		}
		fmt.Fprintf(tw, "%s -> %s\t%d\t%d\t%s\t%s\t%s\n", t.Source, t.Target, t.RowsCopied, t.EstimatedRows, state, rate, eta)
	}
	tw.Flush()
}

func (p PhaseState) detail() string {
	var parts []string
	if p.Since != nil {
		parts = append(parts, "since "+p.Since.Format(time.RFC3339))
	}
	if p.Attempt > 0 {
		parts = append(parts, fmt.Sprintf("cutover attempt %d", p.Attempt))
	}
	if p.FencedOld {
		parts = append(parts, "old database fenced (read-only)")
	}
	if p.FencedNew {
		parts = append(parts, "new database fenced (read-only)")
	}
	if p.UnavailableSeconds > 0 {
		parts = append(parts, fmt.Sprintf("last switch: writes unavailable %s", time.Duration(p.UnavailableSeconds*float64(time.Second)).Round(time.Millisecond)))
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// walBudget says how much WAL may still be written before the slot is
// lost, and warns once it is past max_slot_wal_keep_size.
func (r *Report) walBudget() string {
	switch {
	case r.WALStatus == "unreserved":
		return "; WARNING: unreserved, past max_slot_wal_keep_size: the old database invalidates it at its next checkpoint unless tandem catches up (raise max_slot_wal_keep_size now)"
	case r.SafeWALBytes != nil:
		return fmt.Sprintf(" (%s; %s more before max_slot_wal_keep_size invalidates it)", r.WALStatus, bytesText(max(*r.SafeWALBytes, 0)))
	case r.WALStatus != "":
		return " (" + r.WALStatus + ")"
	}
	return ""
}

func bar(pct float64) string {
	n := int(pct / 5)
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", 20-n) + "]"
}

func bytesText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
