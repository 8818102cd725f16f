package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tandem-migrate/tandem/pkg/catalog"
)

// MappingKey names one tables[] mapping in tandem.backfill and in logs and
// metric labels.
func MappingKey(source, target string) string { return source + " -> " + target }

// Progress is one mapping's backfill state, as last committed on the
// target together with the rows it covers.
type Progress struct {
	Source, Target string
	// Cursor is the key of the last row copied (nil: from the start).
	Cursor     []string
	Done       bool
	RowsCopied int64
	// Seconds is the time from the first chunk to the last.
	Seconds float64
}

// LoadProgress reads every mapping's progress for migration name, keyed by
// MappingKey. A target tandem never wrote has none.
func LoadProgress(ctx context.Context, q catalog.Querier, name string) (map[string]Progress, error) {
	out := map[string]Progress{}
	rows, err := q.Query(ctx, `SELECT source, target, cursor, done, rows_copied,
		extract(epoch FROM updated_at - started_at)::float8 FROM tandem.backfill WHERE name = $1`, name)
	if Missing(err) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load backfill progress: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var p Progress
		if err := rows.Scan(&p.Source, &p.Target, &p.Cursor, &p.Done, &p.RowsCopied, &p.Seconds); err != nil {
			return nil, fmt.Errorf("load backfill progress: %w", err)
		}
		out[MappingKey(p.Source, p.Target)] = p
	}
	if err := rows.Err(); err != nil && !Missing(err) {
		return nil, fmt.Errorf("load backfill progress: %w", err)
	}
	return out, nil
}

// progressSQL saves a chunk's progress inside the applier's transaction:
// the cursor moves and the count grows only with the rows they cover.
const progressSQL = `INSERT INTO tandem.backfill (name, source, target, cursor, done, rows_copied)
VALUES ($1::text, $2::text, $3::text, $4::text[], $5::bool, $6::int8)
ON CONFLICT (name, source, target) DO UPDATE SET cursor = COALESCE(EXCLUDED.cursor, tandem.backfill.cursor),
	done = EXCLUDED.done, rows_copied = tandem.backfill.rows_copied + EXCLUDED.rows_copied, updated_at = now()`

// ProgressStatement renders the save of one applied chunk, with text
// parameters: cursor is a text[] literal (nil keeps the stored cursor).
func ProgressStatement(name, source, target string, cursor []byte, done bool, copied int) (string, [][]byte) {
	return progressSQL, [][]byte{[]byte(name), []byte(source), []byte(target), cursor,
		[]byte(strconv.FormatBool(done)), []byte(strconv.Itoa(copied))}
}

// Exists reports whether a checkpoint was ever saved for name on the
// target (false too when tandem never ran against it).
func Exists(ctx context.Context, q catalog.Querier, name string) (bool, error) {
	var existed bool
	err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM tandem.checkpoint WHERE name = $1)`, name).Scan(&existed)
	if Missing(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up checkpoint %q on the target: %w", name, err)
	}
	return existed, nil
}

// Missing reports an error that says schema tandem or its tables do not
// exist on the target: tandem never ran against it.
func Missing(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000")
}
