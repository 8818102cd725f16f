package natstest

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/sink"
)

// TableImage reads a table as a consumer image of it: key columns key,
// every column's text form rendered as tandem publishes it. Read with the
// server's default settings, as tandem's own sessions are.
func TableImage(ctx context.Context, conn *pgx.Conn, table string, key []string) (map[string]map[string]json.RawMessage, error) {
	rows, err := conn.Query(ctx, "SELECT * FROM "+table, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]map[string]json.RawMessage{}
	fields := rows.FieldDescriptions()
	for rows.Next() {
		row := map[string]json.RawMessage{}
		k := map[string]json.RawMessage{}
		for i, v := range rows.RawValues() {
			f := fields[i]
			j := json.RawMessage(sink.AppendValue(nil, f.DataTypeOID, v, v == nil))
			row[f.Name] = j
			if slices.Contains(key, f.Name) {
				k[f.Name] = j
			}
		}
		out[KeyOf(k)] = row
	}
	return out, rows.Err()
}

// CompareImage reports how got (a consumer's image of one table) differs
// from want (the table read with TableImage): rows missing or extra, and
// columns of got whose value differs. Columns want has and got lacks (not
// mapped, so never published) are not compared.
func CompareImage(got, want map[string]map[string]json.RawMessage) error {
	var diffs []string
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			diffs = append(diffs, "missing row "+k)
			continue
		}
		for c, v := range g {
			if wv, ok := w[c]; !ok || string(wv) != string(v) {
				diffs = append(diffs, fmt.Sprintf("row %s column %s: published %s, table has %s", k, c, abbrev(v), abbrev(wv)))
			}
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, "extra row "+k)
		}
	}
	if len(diffs) == 0 {
		return nil
	}
	slices.Sort(diffs)
	n := len(diffs)
	if len(diffs) > 10 {
		diffs = diffs[:10]
	}
	return fmt.Errorf("%d difference(s), first ones:\n%s", n, strings.Join(diffs, "\n"))
}

func abbrev(v []byte) string {
	if len(v) > 80 {
		return string(v[:77]) + "..."
	}
	return string(v)
}
