package transform

import (
	"strings"
	"testing"

	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/config"
)

func TestInvert(t *testing.T) {
	old := &catalog.Table{Schema: "public", Name: "orders", PrimaryKey: []string{"id"}, Columns: []catalog.Column{
		{Name: "id", Type: "bigint", NotNull: true, Identity: true},
		{Name: "status_code", Type: "integer", NotNull: true},
		{Name: "customer_id", Type: "bigint"},
		{Name: "legacy_flag", Type: "boolean", NotNull: true, HasDefault: true},
		{Name: "note", Type: "text"},
		{Name: "total_x2", Type: "numeric", Generated: true},
	}}
	src := SourceFromCatalog(old)
	newT := &catalog.Table{Schema: "public", Name: "orders_v2", PrimaryKey: []string{"id"}, Columns: []catalog.Column{
		{Name: "id", Type: "bigint", NotNull: true},
		{Name: "status", Type: "text"},
		{Name: "customer_ref", Type: "bigint"},
		{Name: "note", Type: "text"},
		{Name: "search", Type: "tsvector", Generated: true},
	}}
	newCols := SourceFromCatalog(newT)
	fwdCfg := config.TableConfig{Source: "public.orders", Target: "public.orders_v2", Drop: []string{"legacy_flag"},
		Columns: map[string]string{"status": "CASE status_code WHEN 1 THEN 'pending' ELSE 'paid' END", "customer_ref": "customer_id"}}
	fwd, err := Compile("tables[0]", fwdCfg, src, 'd', newT)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		rev     *config.TableReverse
		want    map[string]string
		wantErr []string
	}{
		{name: "expression without inverse", rev: nil,
			wantErr: []string{"tables[0].reverse.columns.status_code", "feeds new column(s) status"}},
		{name: "inverse given", rev: &config.TableReverse{Columns: map[string]string{"status_code": "CASE status WHEN 'pending' THEN 1 ELSE 2 END"}},
			want: map[string]string{"id": `"id"`, "status_code": "CASE status WHEN 'pending' THEN 1 ELSE 2 END", "customer_id": `"customer_ref"`, "note": `"note"`}},
		{name: "unknown and generated old columns", rev: &config.TableReverse{Columns: map[string]string{"status_code": "1", "nope": "1", "total_x2": "1"}},
			wantErr: []string{`has no column "nope"`, "total_x2 is generated"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv, err := Invert("tables[0]", fwd, old, newCols, tt.rev)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("want error, got %+v", inv)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(inv.Table.Columns) != len(tt.want) {
				t.Errorf("columns = %v, want %v", inv.Table.Columns, tt.want)
			}
			for k, v := range tt.want {
				if inv.Table.Columns[k] != v {
					t.Errorf("column %s = %q, want %q", k, inv.Table.Columns[k], v)
				}
			}
			if strings.Join(inv.NotCarried, ",") != "legacy_flag" {
				t.Errorf("not carried = %v, want [legacy_flag]", inv.NotCarried)
			}
			if inv.Table.Source != "public.orders_v2" || inv.Table.Target != "public.orders" {
				t.Errorf("direction = %s -> %s", inv.Table.Source, inv.Table.Target)
			}
			if strings.Join(inv.Table.Drop, ",") != "id,status,customer_ref,note" {
				t.Errorf("drop = %v: every writable new column, none generated", inv.Table.Drop)
			}
		})
	}
}

func TestInvertNotNullDropped(t *testing.T) {
	old := &catalog.Table{Schema: "public", Name: "t", PrimaryKey: []string{"id"}, Columns: []catalog.Column{
		{Name: "id", Type: "bigint", NotNull: true, Identity: true},
		{Name: "must", Type: "text", NotNull: true},
	}}
	newT := &catalog.Table{Schema: "public", Name: "t2", PrimaryKey: []string{"id"}, Columns: []catalog.Column{{Name: "id", Type: "bigint", NotNull: true}}}
	fwd, err := Compile("tables[1]", config.TableConfig{Source: "public.t", Target: "public.t2"}, SourceFromCatalog(old), 'd', newT)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Invert("tables[1]", fwd, old, SourceFromCatalog(newT), nil)
	if err == nil || !strings.Contains(err.Error(), "tables[1].reverse.columns.must") || !strings.Contains(err.Error(), "NOT NULL without a default") {
		t.Fatalf("err = %v", err)
	}
	inv, err := Invert("tables[1]", fwd, old, SourceFromCatalog(newT), &config.TableReverse{Columns: map[string]string{"must": "'n/a'"}})
	if err != nil || inv.Table.Columns["must"] != "'n/a'" {
		t.Fatalf("inv=%+v err=%v", inv, err)
	}
}

func TestPlainColumn(t *testing.T) {
	src := []SourceColumn{{Name: "a"}, {Name: `We"ird`}}
	for _, tc := range []struct {
		expr string
		want string
		ok   bool
	}{{"a", "a", true}, {` "a" `, "a", true}, {`"We""ird"`, `We"ird`, true}, {"a + 1", "", false}, {"b", "", false}, {"lower(a)", "", false}} {
		got, ok := PlainColumn(tc.expr, src)
		if got != tc.want || ok != tc.ok {
			t.Errorf("PlainColumn(%q) = %q,%v want %q,%v", tc.expr, got, ok, tc.want, tc.ok)
		}
	}
}
