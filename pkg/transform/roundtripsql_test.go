package transform

import (
	"testing"

	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/config"
)

// TestRoundTripSQL: the statements that run rows through a mapping for the
// round-trip proof, for a mapping with an expression, a filter, a generated
// target column and a name that needs quoting.
func TestRoundTripSQL(t *testing.T) {
	tgt := &catalog.Table{Schema: "public", Name: "t2", PrimaryKey: []string{"id"}, UniqueKeys: [][]string{{"id"}},
		Columns: []catalog.Column{
			{Name: "id", Type: "bigint", FullType: "bigint", NotNull: true},
			{Name: "status", Type: "character varying", FullType: "character varying(8)"},
			{Name: "Body", Type: "text", FullType: "text"},
			{Name: "gen", Type: "text", FullType: "text", Generated: true},
		}}
	src := []SourceColumn{
		{Name: "id", TypeOID: 20, BindType: "bigint", Identity: true},
		{Name: "code", TypeOID: 23, BindType: "integer"},
		{Name: "Body", TypeOID: 25, BindType: "text"},
	}
	m, err := Compile("tables[0]", config.TableConfig{Source: "public.t", Target: "public.t2", Filter: "code > 0",
		Columns: map[string]string{"status": "CASE code WHEN 1 THEN 'a' END"}}, src, 'f', tgt)
	if err != nil {
		t.Fatal(err)
	}
	keys := []Carried{{Name: CarryName(0), Type: "bigint"}}
	ddl, cp := m.RoundTripStage("st", keys, false)
	_, cpBin := m.RoundTripStage("st", nil, true)
	for _, tc := range []struct{ name, got, want string }{
		{"stage DDL", ddl, `CREATE TEMP TABLE "st" ("tandem_rt_k0" bigint, "id" bigint, "code" integer, "Body" text) ON COMMIT DELETE ROWS`},
		{"stage COPY, text", cp, `COPY "st" ("tandem_rt_k0", "id", "code", "Body") FROM STDIN`},
		{"stage COPY, binary, nothing carried", cpBin, `COPY "st" ("id", "code", "Body") FROM STDIN (FORMAT binary)`},
		{"result DDL: full types, generated left out", m.RoundTripResultDDL("out", keys),
			`CREATE TEMP TABLE "out" ("tandem_rt_k0" bigint, "id" bigint, "status" character varying(8), "Body" text) ON COMMIT DELETE ROWS`},
		{"projection", m.RoundTripProjectSQL("st", []string{"id"}),
			`SELECT s."id" AS tandem_rt_k0, ("id")::bigint AS "id", (CASE code WHEN 1 THEN 'a' END)::character varying AS "status", ("Body")::text AS "Body", COALESCE((code > 0), false) AS tandem_rt_pass FROM "st" AS s`},
		{"forward keeps passing rows", m.RoundTripForwardSQL("st", "out", []string{"id"}),
			`INSERT INTO "out" (tandem_rt_k0, "id", "status", "Body") SELECT tandem_rt_k0, "id", "status", "Body" FROM (` +
				m.RoundTripProjectSQL("st", []string{"id"}) + `) AS p WHERE p.tandem_rt_pass`},
		{"copy out of results", m.RoundTripCopyOutSQL("out", 1, true),
			`COPY (SELECT tandem_rt_k0, "id", "code", "Body" FROM "out") TO STDOUT (FORMAT binary)`},
		{"copy out of the source table", m.SourceCopyOutSQL(`"public"."t"`, `s."id" > 3`, false),
			`COPY (SELECT s."id", s."code", s."Body" FROM "public"."t" AS s WHERE s."id" > 3) TO STDOUT`},
		{"copy out of the whole source table", m.SourceCopyOutSQL(`"public"."t"`, "", false),
			`COPY (SELECT s."id", s."code", s."Body" FROM "public"."t" AS s) TO STDOUT`},
	} {
		if tc.got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, tc.got, tc.want)
		}
	}

	unfiltered, err := Compile("tables[0]", config.TableConfig{Source: "public.t", Target: "public.t2"}, src, 'f', tgt)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := unfiltered.RoundTripProjectSQL("st", nil), `SELECT ("id")::bigint AS "id", ("Body")::text AS "Body", true AS tandem_rt_pass FROM "st" AS s`; got != want {
		t.Errorf("projection without filter:\n got %s\nwant %s", got, want)
	}
}

func TestBinarySource(t *testing.T) {
	for _, tc := range []struct {
		name string
		cols []SourceColumn
		want bool
	}{
		{"built-in types", []SourceColumn{{TypeOID: 20}, {TypeOID: 25}, {TypeOID: 1009}}, true},
		{"a user-defined type", []SourceColumn{{TypeOID: 20}, {TypeOID: 16500}}, false},
		{"aclitem has no binary IO", []SourceColumn{{TypeOID: 1033}}, false},
	} {
		if got := (&Mapping{Source: tc.cols}).BinarySource(); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
