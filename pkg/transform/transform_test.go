package transform

import (
	"strings"
	"testing"

	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/config"
)

func srcCols() []SourceColumn {
	return []SourceColumn{
		{Name: "id", TypeOID: 20, BindType: "bigint", Identity: true},
		{Name: "code", TypeOID: 23, BindType: "integer"},
		{Name: "body", TypeOID: 25, BindType: "text", Toastable: true},
		{Name: "other", TypeOID: 25, BindType: "text", Toastable: true},
		{Name: "flag", TypeOID: 16, BindType: "boolean"},
	}
}

func target() *catalog.Table {
	return &catalog.Table{Schema: "public", Name: "t2", PrimaryKey: []string{"id"}, UniqueKeys: [][]string{{"id"}},
		Columns: []catalog.Column{
			{Name: "id", Type: "bigint", NotNull: true},
			{Name: "status", Type: "text"},
			{Name: "body", Type: "text"},
			{Name: "other", Type: "text"},
			{Name: "gen", Type: "text", Generated: true},
		}}
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name  string
		tc    config.TableConfig
		ident byte
		want  string // substring of the error; "" = compiles
	}{
		{"identity mapping", config.TableConfig{}, 'd', ""},
		{"expression", config.TableConfig{Columns: map[string]string{"status": "CASE code WHEN 1 THEN 'a' END"}}, 'd', ""},
		{"unknown target column", config.TableConfig{Columns: map[string]string{"nope": "code"}}, 'd', `no column "nope"`},
		{"generated target column", config.TableConfig{Columns: map[string]string{"gen": "code"}}, 'd', "generated"},
		{"drop unknown", config.TableConfig{Drop: []string{"zzz"}}, 'd', `no column "zzz"`},
		{"key not unique", config.TableConfig{Key: []string{"status"}, Columns: map[string]string{"status": "code::text"}}, 'd', "nullable"},
		{"key from non-identity column", config.TableConfig{Columns: map[string]string{"id": "code"}}, 'd', "replica identity"},
		{"key from non-identity column is fine with FULL", config.TableConfig{Columns: map[string]string{"id": "code"}}, 'f', ""},
		{"toast mixed with another column", config.TableConfig{Columns: map[string]string{"status": "body || code"}}, 'd', "REPLICA IDENTITY FULL"},
		{"toast alone is fine", config.TableConfig{Columns: map[string]string{"status": "upper(body)"}}, 'd', ""},
		{"filter with large columns needs FULL", config.TableConfig{Filter: "flag"}, 'd', "REPLICA IDENTITY FULL"},
		{"filter with FULL", config.TableConfig{Filter: "flag"}, 'f', ""},
		{"replica identity nothing", config.TableConfig{}, 'n', "NOTHING"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.tc.Source, tt.tc.Target = "public.t", "public.t2"
			_, err := Compile("tables[0]", tt.tc, srcCols(), tt.ident, target())
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want it to mention %q", err, tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), "tables[0]"):
				t.Fatalf("error %v does not name the config field", err)
			}
		})
	}
}

func TestStatements(t *testing.T) {
	m, err := Compile("tables[0]", config.TableConfig{Source: "public.t", Target: "public.t2",
		Columns: map[string]string{"status": "code::text"}}, srcCols(), 'd', target())
	if err != nil {
		t.Fatal(err)
	}
	v := func(s string) change.Value { return change.Value{Kind: change.Text, Data: []byte(s)} }
	u := change.Value{Kind: change.Unchanged}
	null := change.Value{Kind: change.Null}
	full := []change.Value{v("1"), v("2"), v("b"), v("o"), v("t")}
	withToast := []change.Value{v("1"), v("3"), u, v("o"), v("t")}
	tests := []struct {
		name    string
		c       change.Change
		want    []string // substrings, one per statement
		needRow []bool
	}{
		{"insert is an upsert", change.Change{Op: change.Insert, New: full}, []string{"ON CONFLICT"}, []bool{false}},
		{"update is an upsert", change.Change{Op: change.Update, New: full}, []string{"ON CONFLICT"}, []bool{false}},
		{"unchanged TOAST leaves the column out", change.Change{Op: change.Update, New: withToast}, []string{"UPDATE"}, []bool{true}},
		{"key change deletes the old key first", change.Change{Op: change.Update, New: full, Old: []change.Value{v("9"), null, null, null, null}},
			[]string{"DELETE", "ON CONFLICT"}, []bool{false, false}},
		{"key change with unchanged TOAST moves the row in place", change.Change{Op: change.Update, New: withToast, Old: []change.Value{v("9"), null, null, null, null}},
			[]string{"ok AS"}, []bool{true}},
		{"delete", change.Change{Op: change.Delete, Old: []change.Value{v("1"), null, null, null, null}}, []string{"DELETE"}, []bool{false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := m.Statements(nil, &tt.c)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("%d statements, want %d: %+v", len(got), len(tt.want), got)
			}
			for i, st := range got {
				if !strings.Contains(st.SQL, tt.want[i]) || st.NeedRow != tt.needRow[i] {
					t.Errorf("statement %d = %q (NeedRow %v), want %q (NeedRow %v)", i, st.SQL, st.NeedRow, tt.want[i], tt.needRow[i])
				}
				if strings.Contains(st.SQL, `"body" = `) && tt.c.New != nil && tt.c.New[2].Kind == change.Unchanged {
					t.Errorf("unchanged TOAST column is written: %s", st.SQL)
				}
			}
		})
	}
	if _, err := m.Statements(nil, &change.Change{Op: change.Insert, New: full[:2]}); err == nil {
		t.Fatal("a tuple of the wrong width was accepted")
	}
}

type extraCol struct {
	oid uint32
	typ string
}

// TestDirectBinary: rows travel in binary only when every source column
// is copied unchanged to one target column and has a built-in type with
// binary I/O; otherwise a pure copy still goes direct, in text.
func TestDirectBinary(t *testing.T) {
	col := func(name string, oid uint32, typ string) (SourceColumn, catalog.Column) {
		return SourceColumn{Name: name, TypeOID: oid, BindType: typ, Identity: name == "id"}, catalog.Column{Name: name, TypeOID: oid, Type: typ, NotNull: name == "id"}
	}
	tests := []struct {
		name           string
		v              extraCol // a second column, v
		tc             config.TableConfig
		direct, binary bool
	}{
		{"built-in types", extraCol{1184, "timestamp with time zone"}, config.TableConfig{}, true, true},
		{"built-in array", extraCol{1007, "integer[]"}, config.TableConfig{}, true, true},
		{"user-defined type", extraCol{16500, "mood"}, config.TableConfig{}, true, false},
		{"aclitem has no binary I/O", extraCol{1033, "aclitem"}, config.TableConfig{}, true, false},
		{"a source column not copied", extraCol{25, "text"}, config.TableConfig{Drop: []string{"v"}}, true, false},
		{"an expression", extraCol{25, "text"}, config.TableConfig{Columns: map[string]string{"v": "upper(v)"}}, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			idS, idT := col("id", 20, "bigint")
			vS, vT := col("v", tt.v.oid, tt.v.typ)
			src := []SourceColumn{idS, vS}
			tgt := &catalog.Table{Schema: "public", Name: "t2", PrimaryKey: []string{"id"}, UniqueKeys: [][]string{{"id"}}, Columns: []catalog.Column{idT, vT}}
			tt.tc.Source, tt.tc.Target = "public.t", "public.t2"
			m, err := Compile("tables[0]", tt.tc, src, 'd', tgt)
			if err != nil {
				t.Fatal(err)
			}
			d, ok := m.Direct()
			if ok != tt.direct || d.Binary != tt.binary {
				t.Fatalf("direct %v binary %v, want direct %v binary %v", ok, d.Binary, tt.direct, tt.binary)
			}
			if d.Binary && strings.Join(d.BySource, ",") != "id,v" {
				t.Fatalf("BySource = %v", d.BySource)
			}
		})
	}
}
