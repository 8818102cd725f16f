package cutover

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/transform"
)

// Logical replication does not carry sequences. Whichever database takes
// the writes next must draw values above every value either side drew so
// far, or its first inserts collide with copied rows. tandem moves each
// sequence a mapped column owns (serial or identity) on the side that is
// about to take writes past the larger of: its counterpart's last value
// (the sequence the source column owns, when the column is copied as is)
// and the highest value in the column; plus a margin. It never moves a
// sequence backwards.

// seqMove is one sequence to move on the side about to take writes.
type seqMove struct {
	seq string // regclass text, as pg_get_serial_sequence gives it
	// from is the counterpart sequence on the other side ("" if none).
	from string
	// table and column are where values drawn from seq end up ("" for a
	// configured pair).
	table, column string
}

func (m seqMove) String() string {
	if m.table == "" {
		return fmt.Sprintf("%s (from %s)", m.seq, m.from)
	}
	return fmt.Sprintf("%s (%s.%s)", m.seq, m.table, m.column)
}

// planSequences lists the sequences to move on dst for mappings that
// write dst from src. pairs are configured (src seq, dst seq) pairs.
func planSequences(ctx context.Context, src, dst *pgx.Conn, maps []*transform.Mapping, pairs [][2]string) ([]seqMove, error) {
	var out []seqMove
	for _, m := range maps {
		for _, c := range m.Columns {
			var seq *string
			if err := dst.QueryRow(ctx, `SELECT pg_get_serial_sequence($1, $2)`, m.Target.QualifiedName(), c.Name).Scan(&seq); err != nil {
				return nil, fmt.Errorf("sequence of %s.%s: %w", m.TargetName, c.Name, err)
			}
			if seq == nil {
				continue
			}
			mv := seqMove{seq: *seq, table: m.Target.QualifiedName(), column: c.Name}
			if s, ok := transform.PlainColumn(c.Expr, m.Source); ok {
				var from *string
				if err := src.QueryRow(ctx, `SELECT pg_get_serial_sequence($1, $2)`, quoteQualified(m.SourceName), s).Scan(&from); err != nil {
					return nil, fmt.Errorf("sequence of %s.%s: %w", m.SourceName, s, err)
				}
				if from != nil {
					mv.from = *from
				}
			}
			out = append(out, mv)
		}
	}
	for _, p := range pairs {
		out = append(out, seqMove{seq: quoteQualified(p[1]), from: quoteQualified(p[0])})
	}
	return out, nil
}

func quoteQualified(name string) string {
	s, t, err := config.SplitQualified(name)
	if err != nil {
		return name
	}
	return pgx.Identifier{s, t}.Sanitize()
}

// moveSequences applies the moves; it returns one line per sequence.
func moveSequences(ctx context.Context, src, dst *pgx.Conn, moves []seqMove, margin int64) ([]string, error) {
	var out []string
	for _, mv := range moves {
		floor := int64(0)
		if mv.from != "" {
			var last *int64
			// NULL until the sequence is first used.
			if err := src.QueryRow(ctx, `SELECT pg_sequence_last_value($1::regclass)`, mv.from).Scan(&last); err != nil {
				return out, fmt.Errorf("read sequence %s: %w", mv.from, err)
			}
			if last != nil {
				floor = *last
			}
		}
		if mv.table != "" {
			var top *int64
			// Only integer columns own sequences; the key index makes this a
			// lookup for the usual id column.
			sql := fmt.Sprintf("SELECT max(%s)::bigint FROM %s", pgx.Identifier{mv.column}.Sanitize(), mv.table)
			if err := dst.QueryRow(ctx, sql).Scan(&top); err != nil {
				return out, fmt.Errorf("highest %s in %s: %w", mv.column, mv.table, err)
			}
			if top != nil && *top > floor {
				floor = *top
			}
		}
		target := floor + margin
		var now *int64
		if err := dst.QueryRow(ctx, `SELECT pg_sequence_last_value($1::regclass)`, mv.seq).Scan(&now); err != nil {
			return out, fmt.Errorf("read sequence %s: %w", mv.seq, err)
		}
		if now != nil && *now >= target {
			out = append(out, fmt.Sprintf("%s already at %d", mv, *now))
			continue
		}
		if _, err := dst.Exec(ctx, `SELECT setval($1::regclass, $2)`, mv.seq, target); err != nil {
			return out, fmt.Errorf("setval %s to %d: %w (the role needs UPDATE on the sequence)", mv.seq, target, err)
		}
		out = append(out, fmt.Sprintf("%s -> %d", mv, target))
	}
	return out, nil
}

func pairsFor(cfg *config.Config, forward bool) [][2]string {
	var out [][2]string
	for _, p := range cfg.Cutover.Sequences {
		if forward {
			out = append(out, [2]string{p.Old, p.New})
		} else {
			out = append(out, [2]string{p.New, p.Old})
		}
	}
	return out
}

func summary(lines []string) string {
	if len(lines) == 0 {
		return "none owned by mapped columns"
	}
	return strings.Join(lines, "; ")
}
