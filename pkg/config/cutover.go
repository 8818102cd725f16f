package config

import (
	"fmt"
	"strings"
	"time"
)

// ReverseConfig is the stream that runs new -> old after cutover, so a
// rollback loses nothing written to the new database. Its per-table
// inverse lives beside each forward mapping (TableConfig.Reverse).
type ReverseConfig struct {
	// Slot and Publication live on the new database. Defaults:
	// <source.slot>_rev and <source.publication>_rev.
	Slot        string `mapstructure:"slot"`
	Publication string `mapstructure:"publication"`
	// Enabled (default true) makes the inverse of every mapping part of
	// the migration: validate proves it, and cutover requires it. false
	// declares the migration one-way: validate skips the reverse and
	// cutover refuses, since nothing could carry writes back.
	Enabled *bool `mapstructure:"enabled"`
	// RoundTripSample is how many rows per table `validate` pushes through
	// old -> forward -> reverse to prove the inverse (default 100000, in
	// key ranges spread over the table); -1 checks every row.
	RoundTripSample int `mapstructure:"round_trip_sample"`
}

// IsEnabled reports whether the migration streams back after cutover.
func (r ReverseConfig) IsEnabled() bool { return r.Enabled == nil || *r.Enabled }

// TableReverse inverts one forward mapping: old column <- SQL expression
// over the new table's columns. Columns the forward mapping copies or
// renames are inverted without being listed.
type TableReverse struct {
	Columns map[string]string `mapstructure:"columns"`
	// Filter is a SQL predicate over new columns; rows failing it are not
	// carried back.
	Filter string `mapstructure:"filter"`
	// Skip leaves this mapping out of the reverse stream, for an old table
	// split into several new ones: only one of them may carry it back.
	Skip bool `mapstructure:"skip"`
}

// CutoverConfig drives `tandem cutover` and `tandem rollback`.
type CutoverConfig struct {
	// MaxLag is the gate on replication lag: a marker written on the old
	// database must reach the new one's checkpoint within it.
	MaxLag time.Duration `mapstructure:"max_lag"`
	// MaxDivergence is the largest share of differing rows the last verify
	// pass of each table may have found (0: it must have been clean).
	MaxDivergence float64 `mapstructure:"max_divergence"`
	// Fence is how writes to the old database stop: read_only (tandem sets
	// default_transaction_read_only and ends application sessions) or none
	// (the applications' own switch does it).
	Fence string `mapstructure:"fence"`
	// Verify is the final check inside the fence: full, changed (tables
	// written since their last clean pass) or none.
	Verify string `mapstructure:"verify"`
	// SequenceMargin is added to every sequence moved at cutover and
	// rollback, to stay clear of values drawn while the step ran.
	SequenceMargin int64 `mapstructure:"sequence_margin"`
	// Sequences pairs sequences that no mapped column owns (old, new).
	Sequences []SequencePair `mapstructure:"sequences"`
	// Timeout bounds each wait of the ceremony (fence reached, slot free).
	Timeout time.Duration `mapstructure:"timeout"`
}

// SequencePair is one sequence on each side that must move together.
type SequencePair struct {
	Old string `mapstructure:"old"`
	New string `mapstructure:"new"`
}

// Fence values.
const (
	FenceReadOnly = "read_only"
	FenceNone     = "none"
)

// Final-check values.
const (
	VerifyFull    = "full"
	VerifyChanged = "changed"
	VerifyNone    = "none"
)

// Origin names tag each direction's writes (pg_replication_origin), so the
// other direction recognises and skips them instead of echoing them back.
func ForwardOrigin(name string) string { return "tandem_" + name + "_fwd" }
func ReverseOrigin(name string) string { return "tandem_" + name + "_rev" }

// ReverseName names the reverse stream's checkpoint and locks.
func ReverseName(name string) string { return name + "_rev" }

func (c *Config) applyCutoverDefaults() {
	if c.Reverse.Slot == "" {
		c.Reverse.Slot = trimIdent(c.Source.Slot + "_rev")
	}
	if c.Reverse.Publication == "" {
		c.Reverse.Publication = trimIdent(c.Source.Publication + "_rev")
	}
	if c.Reverse.RoundTripSample == 0 {
		c.Reverse.RoundTripSample = 100000
	}
	if c.Cutover.MaxLag == 0 {
		c.Cutover.MaxLag = 5 * time.Second
	}
	if c.Cutover.Fence == "" {
		c.Cutover.Fence = FenceReadOnly
	}
	if c.Cutover.Verify == "" {
		c.Cutover.Verify = VerifyChanged
	}
	if c.Cutover.SequenceMargin == 0 {
		c.Cutover.SequenceMargin = 1000
	}
	if c.Cutover.Timeout == 0 {
		c.Cutover.Timeout = 2 * time.Minute
	}
	if c.Apply.Origin == "" {
		c.Apply.Origin = ForwardOrigin(c.Name)
	}
	if c.Source.SkipOrigin == "" {
		c.Source.SkipOrigin = ReverseOrigin(c.Name)
	}
}

func trimIdent(s string) string {
	if len(s) > 63 {
		return s[:63]
	}
	return s
}

func (c *Config) validateCutover(add func(field, format string, args ...any)) {
	if !identRe.MatchString(c.Reverse.Slot) {
		add("reverse.slot", "%q is not a valid slot name: use lower-case letters, digits and _ (max 63)", c.Reverse.Slot)
	}
	if !identRe.MatchString(c.Reverse.Publication) {
		add("reverse.publication", "%q is not a valid publication name: use lower-case letters, digits and _ (max 63)", c.Reverse.Publication)
	}
	if c.Reverse.Slot == c.Source.Slot && c.Source.DSN == c.Target.DSN {
		add("reverse.slot", "must differ from source.slot when both databases are the same server and database")
	}
	if c.Reverse.RoundTripSample < -1 {
		add("reverse.round_trip_sample", "must be a positive number of rows, or -1 for every row")
	}
	switch c.Cutover.Fence {
	case FenceReadOnly, FenceNone:
	default:
		add("cutover.fence", "%q is not one of %s, %s", c.Cutover.Fence, FenceReadOnly, FenceNone)
	}
	switch c.Cutover.Verify {
	case VerifyFull, VerifyChanged, VerifyNone:
	default:
		add("cutover.verify", "%q is not one of %s, %s, %s", c.Cutover.Verify, VerifyFull, VerifyChanged, VerifyNone)
	}
	if c.Cutover.MaxDivergence < 0 || c.Cutover.MaxDivergence > 1 {
		add("cutover.max_divergence", "%v is not a share between 0 and 1 (0.001 is 0.1%%)", c.Cutover.MaxDivergence)
	}
	if c.Cutover.SequenceMargin < 0 {
		add("cutover.sequence_margin", "must not be negative")
	}
	for i, s := range c.Cutover.Sequences {
		f := fmt.Sprintf("cutover.sequences[%d]", i)
		if _, _, err := SplitQualified(s.Old); err != nil || s.Old == "" {
			add(f+".old", "name the sequence on the old database as schema.name")
		}
		if _, _, err := SplitQualified(s.New); err != nil || s.New == "" {
			add(f+".new", "name the sequence on the new database as schema.name")
		}
	}
	carried := map[string]int{}
	for i, t := range c.Tables {
		if t.Reverse == nil {
			carried[t.Source]++
			continue
		}
		f := fmt.Sprintf("tables[%d].reverse", i)
		if !t.Reverse.Skip {
			carried[t.Source]++
		}
		for col, expr := range t.Reverse.Columns {
			if strings.TrimSpace(expr) == "" {
				add(fmt.Sprintf("%s.columns.%s", f, col), "empty expression; write a SQL expression over the new table's columns")
			}
		}
	}
	for i, t := range c.Tables {
		if carried[t.Source] > 1 {
			add(fmt.Sprintf("tables[%d].reverse", i), "old table %s feeds %d new tables; only one may carry its rows back after cutover: set reverse: {skip: true} on the others", t.Source, carried[t.Source])
			carried[t.Source] = 0 // say it once
		}
	}
}
