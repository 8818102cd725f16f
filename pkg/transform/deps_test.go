package transform

import (
	"reflect"
	"testing"
)

func TestReferences(t *testing.T) {
	tests := []struct {
		expr string
		want []string
	}{
		{"customer_id", []string{"customer_id"}},
		{`"CamelCase" || lower(Name)`, []string{"CamelCase", "lower", "name"}},
		{"CASE status_code WHEN 1 THEN 'open' WHEN 2 THEN 'paid' ELSE 'unknown' END",
			[]string{"case", "status_code", "when", "then", "else", "end"}},
		{"COALESCE(preferences, '{}'::jsonb)", []string{"coalesce", "preferences", "jsonb"}},
		{"a -- b\n + c", []string{"a", "c"}},
		{"a /* b /* nested */ c */ + d", []string{"a", "d"}},
		{"E'it\\'s x' || y", []string{"y"}},
		{"'it''s x' || y", []string{"y"}},
		{"$$ body x $$ || z", []string{"z"}},
		{"$tag$ body $x$ $tag$ || z", []string{"z"}},
		{"x'1F' || w", []string{"w"}},
		{`"a""b"`, []string{`a"b`}},
	}
	for _, tt := range tests {
		if got := References(tt.expr); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("References(%q) = %q, want %q", tt.expr, got, tt.want)
		}
	}
}
