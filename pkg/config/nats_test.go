package config

import (
	"strings"
	"testing"
	"time"
)

func TestNATS(t *testing.T) {
	withNATS := func(mutate func(*Config)) Config {
		c := Config{
			Source: SourceConfig{DSN: "postgres://u@h/db", Slot: "orders_v2", Publication: "p"},
			Target: TargetConfig{DSN: "postgres://u@h/db2"},
			NATS:   NATSConfig{URL: "nats://127.0.0.1:4222"},
			Tables: []TableConfig{{Source: "public.a"}},
		}
		mutate(&c)
		c.ApplyDefaults()
		return c
	}
	tests := []struct {
		name   string
		mutate func(*Config)
		field  string // "" means valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"stream only", func(c *Config) { c.Target.DSN = ""; f := false; c.Backfill.Enabled = &f }, ""},
		{"stream only copies nothing", func(c *Config) { c.Target.DSN = "" }, "backfill.enabled"},
		{"stream only has no new shape", func(c *Config) {
			c.Target.DSN, c.NATS.Shape = "", "new"
			f := false
			c.Backfill.Enabled = &f
		}, "nats.shape"},
		{"no target, no nats", func(c *Config) { c.Target.DSN, c.NATS.URL = "", "" }, "target.dsn"},
		{"http url", func(c *Config) { c.NATS.URL = "http://x:4222" }, "nats.url"},
		{"password in url", func(c *Config) { c.NATS.URL = "nats://u:secret@x:4222" }, "nats.url"},
		{"two servers", func(c *Config) { c.NATS.URL = "nats://a:4222, tls://b:4222" }, ""},
		{"wildcard prefix", func(c *Config) { c.NATS.Subject = "tandem.*" }, "nats.subject"},
		{"stream name with a dot", func(c *Config) { c.NATS.Stream = "a.b" }, "nats.stream"},
		{"shape", func(c *Config) { c.NATS.Shape = "both" }, "nats.shape"},
		{"retention", func(c *Config) { c.NATS.Retention = "forever" }, "nats.retention"},
		{"discard", func(c *Config) { c.NATS.Discard = "none" }, "nats.discard"},
		{"replicas", func(c *Config) { c.NATS.Replicas = 7 }, "nats.replicas"},
		{"window longer than max_age", func(c *Config) { c.NATS.MaxAge = time.Minute; c.NATS.DuplicateWindow = time.Hour }, "nats.duplicate_window"},
		{"ack timeout in nanoseconds", func(c *Config) { c.NATS.AckTimeout = 10 }, "nats.ack_timeout"},
		{"cert without key", func(c *Config) { c.NATS.TLS.CertFile = "c.pem" }, "nats.tls"},
		{"password without user", func(c *Config) { c.NATS.Password = "x" }, "nats.user"},
		{"creds and token", func(c *Config) { c.NATS.CredsFile = "x.creds"; c.NATS.Token = "t" }, "nats.creds_file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := withNATS(tt.mutate)
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
			if strings.Contains(err.Error(), "secret") {
				t.Fatalf("password leaked: %v", err)
			}
		})
	}
	c := withNATS(func(*Config) {})
	if c.NATS.Stream != "TANDEM_ORDERS_V2" || c.NATS.Subject != "tandem.orders_v2" || !c.NATS.NewShape() || !c.NATS.PublishBackfill() || c.NATS.DuplicateWindow != 2*time.Minute {
		t.Fatalf("defaults: %+v", c.NATS)
	}
	if c := withNATS(func(c *Config) { c.Target.DSN = "" }); c.NATS.NewShape() || !c.StreamOnly() {
		t.Fatalf("stream only defaults to the old shape: %+v", c.NATS)
	}
}
