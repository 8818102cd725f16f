package pipeline

import (
	"strings"
	"testing"

	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/config"
)

// TestCheckSourceGenerated: PostgreSQL does not stream generated columns,
// so a new column fed from one must be computed on the new side.
func TestCheckSourceGenerated(t *testing.T) {
	src := &catalog.Table{Schema: "public", Name: "film", Columns: []catalog.Column{
		{Name: "id"}, {Name: "title"},
		{Name: "fulltext", Generated: true, GenExpr: "to_tsvector('simple'::regconfig, title)"},
	}}
	target := func(generated bool) *catalog.Table {
		return &catalog.Table{Schema: "public", Name: "film", Columns: []catalog.Column{{Name: "id"}, {Name: "title"}, {Name: "fulltext", Generated: generated}}}
	}
	for _, tc := range []struct {
		name    string
		columns map[string]string
		tgt     *catalog.Table
		want    string // "" means accepted
	}{
		{"copied by name into a plain column", nil, target(false), "tables[0].columns.fulltext: source column public.film.fulltext is generated"},
		{"generated on the new side too", nil, target(true), ""},
		{"mapped with its expression", map[string]string{"fulltext": "to_tsvector('simple', title)"}, target(false), ""},
		{"absent on the new side", nil, &catalog.Table{Columns: []catalog.Column{{Name: "id"}}}, ""},
		{"used by another column's expression", map[string]string{"title": "upper(fulltext::text)"}, target(true), "tables[0].columns.title: expression \"upper(fulltext::text)\" uses source column fulltext, which is generated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkSourceGenerated("tables[0]", config.TableConfig{Source: "public.film", Target: "public.film", Columns: tc.columns}, src, tc.tgt)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("want accepted, got %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("want an error containing %q, got %v", tc.want, err)
			}
		})
	}
}
