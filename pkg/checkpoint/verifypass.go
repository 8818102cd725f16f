package checkpoint

import (
	"context"
	"fmt"
	"time"

	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/change"
)

// Pass is the outcome of the last verify pass over one target table, kept
// so the cutover gates can judge it without verifying again.
type Pass struct {
	Compared, Differing int64
	// LSN is the stream checkpoint when the pass started: every change
	// after it may postdate what the pass compared.
	LSN      change.LSN
	Finished time.Time
}

// Ratio is the share of compared rows that differed.
func (p Pass) Ratio() float64 {
	if p.Compared == 0 {
		return 0
	}
	return float64(p.Differing) / float64(p.Compared)
}

// SaveVerifyPass records a finished pass over target (the latest wins).
func SaveVerifyPass(ctx context.Context, q catalog.Querier, name, target string, p Pass) error {
	_, err := q.Exec(ctx, `INSERT INTO tandem.verify_pass (name, target, compared, differing, lsn, finished_at)
		VALUES ($1, $2, $3, $4, $5::text::pg_lsn, now())
		ON CONFLICT (name, target) DO UPDATE SET compared = excluded.compared, differing = excluded.differing,
			lsn = excluded.lsn, finished_at = excluded.finished_at`, name, target, p.Compared, p.Differing, p.LSN.String())
	if err != nil {
		return fmt.Errorf("record verify pass of %s: %w", target, err)
	}
	return nil
}

// LoadVerifyPasses reads the last pass of each target table.
func LoadVerifyPasses(ctx context.Context, q catalog.Querier, name string) (map[string]Pass, error) {
	out := map[string]Pass{}
	rows, err := q.Query(ctx, `SELECT target, compared, differing, lsn, finished_at FROM tandem.verify_pass WHERE name = $1`, name)
	if Missing(err) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load verify passes: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var t string
		var p Pass
		if err := rows.Scan(&t, &p.Compared, &p.Differing, &p.LSN, &p.Finished); err != nil {
			return nil, err
		}
		out[t] = p
	}
	return out, rows.Err()
}

// ActivityStatement records, inside the apply transaction, that targets
// received changes up to lsn, so a cutover can re-check only the tables
// written since their last clean verify pass. Text-format parameters.
func ActivityStatement(name string, targets []string, lsn change.LSN) (string, [][]byte) {
	arr := make([]byte, 0, 64)
	arr = append(arr, '{')
	for i, t := range targets {
		if i > 0 {
			arr = append(arr, ',')
		}
		arr = append(arr, '"')
		for _, r := range []byte(t) {
			if r == '"' || r == '\\' {
				arr = append(arr, '\\')
			}
			arr = append(arr, r)
		}
		arr = append(arr, '"')
	}
	arr = append(arr, '}')
	return `INSERT INTO tandem.activity (name, target, lsn) SELECT $1::text, t, $3::pg_lsn FROM unnest($2::text[]) t
		ON CONFLICT (name, target) DO UPDATE SET lsn = excluded.lsn`, [][]byte{[]byte(name), arr, []byte(lsn.String())}
}

// LoadActivity reads the last change position of each target table.
func LoadActivity(ctx context.Context, q catalog.Querier, name string) (map[string]change.LSN, error) {
	out := map[string]change.LSN{}
	rows, err := q.Query(ctx, `SELECT target, lsn FROM tandem.activity WHERE name = $1`, name)
	if Missing(err) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load table activity: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var t string
		var l change.LSN
		if err := rows.Scan(&t, &l); err != nil {
			return nil, err
		}
		out[t] = l
	}
	return out, rows.Err()
}
