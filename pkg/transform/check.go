package transform

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Check type-checks every statement of the mapping by preparing it on the
// target: a misspelt column, an unknown function or a type mismatch fails
// here, at startup, with PostgreSQL's own message. When a statement fails,
// each column expression and the filter are checked alone, so the error
// names the field to fix and quotes its expression.
func (m *Mapping) Check(ctx context.Context, conn *pgx.Conn, field string) error {
	stmts := []struct{ what, sql string }{
		{"columns", m.upsertSQL},
		{"key", m.deleteSQL},
	}
	for _, s := range stmts {
		if _, err := conn.Prepare(ctx, "", s.sql); err != nil {
			// Inside a transaction (a mapping recompiled mid-stream) the
			// failure aborted it, and so would fail every later check.
			if conn.PgConn().TxStatus() == 'I' {
				if culprits := m.culprits(ctx, conn, field); culprits != nil {
					return culprits
				}
			}
			return &Error{Field: field + "." + s.what, Msg: fmt.Sprintf("mapping %s -> %s does not type-check on the target: %v", m.SourceName, m.TargetName, pgErrText(err))}
		}
	}
	return nil
}

// culprits prepares each column expression and the filter on its own over
// the bound source row, and reports those that fail (nil when none does:
// the whole statement failed for another reason).
func (m *Mapping) culprits(ctx context.Context, conn *pgx.Conn, field string) error {
	var errs []error
	for _, c := range m.Columns {
		sql := fmt.Sprintf("WITH %s SELECT (%s)::%s FROM s", m.sourceCTE(), c.Expr, c.Type)
		if _, err := conn.Prepare(ctx, "", sql); err != nil {
			errs = append(errs, &Error{Field: field + ".columns." + c.Name,
				Msg: fmt.Sprintf("expression %q does not type-check on the target (as %s): %v", c.Expr, c.Type, pgErrText(err))})
		}
	}
	if m.Filter != "" {
		sql := fmt.Sprintf("WITH %s SELECT 1 FROM s WHERE (%s)", m.sourceCTE(), m.Filter)
		if _, err := conn.Prepare(ctx, "", sql); err != nil {
			errs = append(errs, &Error{Field: field + ".filter",
				Msg: fmt.Sprintf("expression %q does not type-check on the target as a condition: %v", m.Filter, pgErrText(err))})
		}
	}
	return errors.Join(errs...)
}

func pgErrText(err error) string {
	return strings.TrimPrefix(err.Error(), "ERROR: ")
}
