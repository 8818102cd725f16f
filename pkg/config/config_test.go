package config

import (
	"strings"
	"testing"
	"time"
)

func valid() Config {
	c := Config{
		Source: SourceConfig{DSN: "postgres://u@h/db", Slot: "s", Publication: "p"},
		Target: TargetConfig{DSN: "postgres://u@h/db2"},
		Tables: []TableConfig{{Source: "public.a"}},
	}
	c.ApplyDefaults()
	return c
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		field  string // "" means valid
	}{
		{"valid", func(*Config) {}, ""},
		{"missing source dsn", func(c *Config) { c.Source.DSN = "" }, "source.dsn"},
		{"garbage target dsn", func(c *Config) { c.Target.DSN = "not a dsn" }, "target.dsn"},
		{"bad slot", func(c *Config) { c.Source.Slot = "Bad-Slot" }, "source.slot"},
		{"file store without path", func(c *Config) { c.Checkpoint.Store = "file" }, "checkpoint.path"},
		{"unknown store", func(c *Config) { c.Checkpoint.Store = "s3" }, "checkpoint.store"},
		{"no tables", func(c *Config) { c.Tables = nil }, "tables"},
		{"bad table name", func(c *Config) { c.Tables[0].Source = "a.b.c" }, "tables[0].source"},
		{"empty expression", func(c *Config) { c.Tables[0].Columns = map[string]string{"x": " "} }, "tables[0].columns.x"},
		{"two mappings one target", func(c *Config) { c.Tables = append(c.Tables, TableConfig{Source: "public.b", Target: "public.a"}) }, "tables[1].target"},
		{"workers", func(c *Config) { c.Backfill.Workers = 100 }, "backfill.workers"},
		{"log level", func(c *Config) { c.Log.Level = "loud" }, "log.level"},
		{"replication role", func(c *Config) { c.Apply.ReplicationRole = "always" }, "apply.session_replication_role"},
		// A nats: section without a server must not pass as publishing.
		{"nats section without url", func(c *Config) { c.NATS.Stream = "S" }, "nats.url"},
		{"fence", func(c *Config) { c.Cutover.Fence = "lock" }, "cutover.fence"},
		{"final check", func(c *Config) { c.Cutover.Verify = "some" }, "cutover.verify"},
		{"divergence share", func(c *Config) { c.Cutover.MaxDivergence = 5 }, "cutover.max_divergence"},
		{"cutover lag", func(c *Config) { c.Cutover.MaxLag = 2 * time.Hour }, "cutover.max_lag"},
		{"reverse slot", func(c *Config) { c.Reverse.Slot = "Rev-Slot" }, "reverse.slot"},
		{"round trip rows", func(c *Config) { c.Reverse.RoundTripSample = -5 }, "reverse.round_trip_sample"},
		{"sequence pair", func(c *Config) { c.Cutover.Sequences = []SequencePair{{Old: "public.s"}} }, "cutover.sequences[0].new"},
		{"empty inverse", func(c *Config) { c.Tables[0].Reverse = &TableReverse{Columns: map[string]string{"x": ""}} }, "tables[0].reverse.columns.x"},
		// A split old table may be carried back by one of its new tables only.
		{"split carried back twice", func(c *Config) {
			c.Tables = append(c.Tables, TableConfig{Source: c.Tables[0].Source, Target: "public.other"})
		}, "tables[0].reverse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.mutate(&c)
			err := c.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.field+":") {
				t.Fatalf("error %v does not name %s", err, tt.field)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	c := valid()
	if c.Name != "s" || c.Checkpoint.Store != "target" || !c.Backfill.IsEnabled() || c.Tables[0].Target != "public.a" {
		t.Fatalf("defaults not applied: %+v", c)
	}
}

func TestRedactDSN(t *testing.T) {
	tests := map[string]string{
		"postgres://bob:s3cret@db:5432/app":            "postgres://bob:xxxxx@db:5432/app",
		"host=db user=bob password=s3cret dbname=app":  "host=db user=bob password=xxxxx dbname=app",
		"host=db password='with space' dbname=app":     "host=db password=xxxxx dbname=app",
		"failed to connect to postgres://a:b@h/d: EOF": "failed to connect to postgres://a:xxxxx@h/d: EOF",
		"postgres://nopass@db/app":                     "postgres://nopass@db/app",
	}
	for in, want := range tests {
		if got := RedactDSN(in); got != want {
			t.Errorf("RedactDSN(%q) = %q, want %q", in, got, want)
		}
		if strings.Contains(RedactDSN(in), "s3cret") {
			t.Errorf("password leaked: %q", RedactDSN(in))
		}
	}
}
