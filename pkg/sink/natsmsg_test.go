package sink

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/tandem-migrate/tandem/pkg/change"
)

func TestAppendValue(t *testing.T) {
	tests := []struct {
		name string
		typ  uint32
		text string
		null bool
		want string
	}{
		{"null", oidInt4, "", true, `null`},
		{"int", oidInt4, "-42", false, `-42`},
		{"numeric keeps its digits", oidNumeric, "12345678901234567890.120", false, `12345678901234567890.120`},
		{"numeric NaN", oidNumeric, "NaN", false, `"NaN"`},
		{"float infinity", oidFloat8, "Infinity", false, `"Infinity"`},
		{"float exponent", oidFloat8, "1e+100", false, `1e+100`},
		{"bool", oidBool, "t", false, `true`},
		{"jsonb", oidJSONB, `{"a": [1, 2]}`, false, `{"a": [1, 2]}`},
		{"text with quotes and control", 25, "a\"b\\c\n\x01é", false, `"a\"b\\c\n\u0001é"`},
		{"timestamp stays text", 1184, "2024-01-02 03:04:05.123+00", false, `"2024-01-02 03:04:05.123+00"`},
		{"leading zero is no number", oidInt4, "01", false, `"01"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(AppendValue(nil, tt.typ, []byte(tt.text), tt.null))
			if got != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
			if !json.Valid([]byte(got)) {
				t.Fatalf("%s is not JSON", got)
			}
		})
	}
}

func TestEventJSON(t *testing.T) {
	e := Event{Op: "update", Schema: "public", Table: "orders_v2",
		Key:       []Field{{Name: "id", Type: oidInt8, Text: []byte("7")}},
		OldKey:    []Field{{Name: "id", Type: oidInt8, Text: []byte("6")}},
		After:     []Field{{Name: "id", Type: oidInt8, Text: []byte("7")}, {Name: "note", Type: 25, Null: true}},
		Unchanged: []string{"body"}, CommitLSN: change.LSN(0x1_0000_00A0), XID: 99,
		CommitTime: time.Date(2025, 1, 2, 3, 4, 5, 6000, time.UTC), Seq: 3}
	var m Message
	if err := json.Unmarshal(e.AppendJSON(nil), &m); err != nil {
		t.Fatal(err)
	}
	if m.Op != "update" || string(m.Key["id"]) != "7" || string(m.OldKey["id"]) != "6" || string(m.After["note"]) != "null" ||
		m.Unchanged[0] != "body" || m.LSN != "1/A0" || m.XID != 99 || m.Seq != 3 || !m.CommitTime.Equal(e.CommitTime) || m.Before != nil {
		t.Fatalf("round trip: %+v", m)
	}
}

func TestSubjectCovers(t *testing.T) {
	tests := []struct {
		pattern, want string
		ok            bool
	}{
		{"tandem.m.>", "tandem.m.>", true},
		{"tandem.>", "tandem.m.>", true},
		{">", "tandem.m.>", true},
		{"tandem.*.>", "tandem.m.>", true},
		{"tandem.m.*", "tandem.m.>", false},
		{"tandem.other.>", "tandem.m.>", false},
		{"tandem.m.>", "tandem.>", false},
	}
	for _, tt := range tests {
		if got := SubjectCovers(tt.pattern, tt.want); got != tt.ok {
			t.Errorf("SubjectCovers(%q, %q) = %v", tt.pattern, tt.want, got)
		}
	}
}

func TestPlaceAfter(t *testing.T) {
	partial := Place{CommitLSN: 100, Seq: 4}
	whole := Place{CommitLSN: 100, Seq: 4, Last: true}
	tests := []struct {
		p      Place
		commit change.LSN
		seq    int
		after  bool
	}{
		{partial, 99, 9, false},
		{partial, 100, 4, false},
		{partial, 100, 5, true},
		{partial, 101, 0, true},
		{whole, 100, 5, false},
		{whole, 101, 0, true},
	}
	for _, tt := range tests {
		if got := tt.p.After(tt.commit, tt.seq); got != tt.after {
			t.Errorf("%+v.After(%d, %d) = %v", tt.p, tt.commit, tt.seq, got)
		}
	}
}

func TestSubject(t *testing.T) {
	if got := Subject("tandem.m", "public", "my table.x"); got != "tandem.m.public.my_table_x" {
		t.Fatal(got)
	}
}
