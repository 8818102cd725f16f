package transform

import (
	"strings"
	"testing"

	"github.com/tandem-migrate/tandem/pkg/config"
)

// TestStagedWrite: the statements of a staged write, in the order that
// keeps a key staged for both a delete and an upsert right.
func TestStagedWrite(t *testing.T) {
	m, err := Compile("tables[0]", config.TableConfig{Source: "public.t", Target: "public.t2"}, srcCols(), 'd', target())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name                            string
		create, binary, deletes, upsert bool
		ddl                             bool
		then                            []string // prefixes, in order
	}{
		{"first use, both kinds", true, false, true, true, true, []string{"WITH s AS (SELECT", "WITH s AS (SELECT", `TRUNCATE "stage_x"`}},
		{"upserts only, table exists", false, false, false, true, false, []string{"WITH s AS (SELECT", `TRUNCATE "stage_x"`}},
		{"deletes only, binary", false, true, true, false, false, []string{"WITH s AS (SELECT", `TRUNCATE "stage_x"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := m.StagedWrite("stage_x", tc.create, tc.binary, tc.deletes, tc.upsert)
			if (w.DDL != "") != tc.ddl || (tc.ddl && !strings.HasPrefix(w.DDL, `CREATE TEMP TABLE IF NOT EXISTS "stage_x"`)) {
				t.Fatalf("DDL %q, want one: %v", w.DDL, tc.ddl)
			}
			if !strings.HasPrefix(w.Copy, `COPY "stage_x"`) || strings.Contains(w.Copy, "binary") != tc.binary {
				t.Fatalf("COPY %q (binary %v)", w.Copy, tc.binary)
			}
			if len(w.Then) != len(tc.then) {
				t.Fatalf("then %q, want %d statements", w.Then, len(tc.then))
			}
			for i, p := range tc.then {
				if !strings.HasPrefix(w.Then[i], p) {
					t.Fatalf("statement %d %q, want prefix %q", i, w.Then[i], p)
				}
			}
			if tc.deletes && !strings.Contains(w.Then[0], "DELETE FROM") {
				t.Fatalf("deletes must come first: %q", w.Then[0])
			}
			if tc.upsert && !strings.Contains(w.Then[len(w.Then)-2], "ON CONFLICT") {
				t.Fatalf("upsert must come last before the truncate: %q", w.Then)
			}
		})
	}
}
