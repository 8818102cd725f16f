package decoder

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestSlotLost(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string // "" when not a lost slot; else a substring of the error
	}{
		{"PostgreSQL 15 and 16", &pgconn.PgError{Code: "55000", Message: `can no longer get changes from replication slot "s"`,
			Detail: "This slot has been invalidated because it exceeded the maximum reserved size."},
			`can no longer get changes from replication slot "s" (This slot has been invalidated because it exceeded the maximum reserved size)`},
		{"PostgreSQL 17", fmt.Errorf("start: %w", &pgconn.PgError{Code: "55000", Message: `cannot read from logical replication slot "s"`,
			Detail: `This slot has been invalidated because it exceeded the maximum reserved size.`}),
			`cannot read from logical replication slot "s"`},
		{"another 55000", &pgconn.PgError{Code: "55000", Message: `logical decoding requires wal_level >= logical`}, ""},
		{"slot in use", &pgconn.PgError{Code: "55006", Message: `replication slot "s" is active for PID 42`}, ""},
		{"not a server error", errors.New("invalidated"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := slotLost("s", tt.err)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("got %v, want no lost slot", err)
			case tt.want != "" && err == nil:
				t.Fatal("not recognised as a lost slot")
			case tt.want != "":
				for _, w := range []string{tt.want, "replication slot s is lost", "tandem teardown", "start over"} {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("%q lacks %q", err, w)
					}
				}
			}
		})
	}
}

func TestSlotInfoLost(t *testing.T) {
	tests := []struct {
		si   SlotInfo
		want string
	}{
		{SlotInfo{Exists: true, WALStatus: "reserved"}, ""},
		{SlotInfo{Exists: true, WALStatus: "unreserved"}, ""},
		{SlotInfo{Exists: true, WALStatus: "lost"}, "max_slot_wal_keep_size"},
		{SlotInfo{Exists: true, WALStatus: "lost", InvalidationReason: "wal_removed"}, "invalidated (wal_removed)"},
		{SlotInfo{Exists: true, InvalidationReason: "idle_timeout"}, "invalidated (idle_timeout)"},
		{SlotInfo{}, ""},
	}
	for _, tt := range tests {
		err := tt.si.LostError("s")
		if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%+v: %v, want %q", tt.si, err, tt.want)
		}
	}
}
