package config

import (
	"net/url"
	"regexp"
	"strings"
	"time"
)

// NATSConfig is the fan-out of every change to a NATS JetStream stream
// (pkg/sink/jetstream.go). It is on when URL is set; with target.dsn
// empty the stream is the migration's only target.
type NATSConfig struct {
	// URL is one server or a comma-separated list (nats:// or tls://).
	URL string `mapstructure:"url"`
	// Stream is the JetStream stream tandem publishes into. It holds this
	// migration's messages only: the last one is where tandem resumes.
	Stream string `mapstructure:"stream"`
	// Subject is the prefix: a change of schema.table goes to
	// <subject>.<schema>.<table>.
	Subject string `mapstructure:"subject"`
	// Shape is "new" (rows as the mapping writes them to the new schema,
	// the default with a target) or "old" (the old database's rows as they
	// are; the only choice without a target).
	Shape string `mapstructure:"shape"`
	// Backfill publishes copied rows too (op "read", at their chunk's high
	// watermark). Default true.
	Backfill *bool `mapstructure:"backfill"`
	// CreateStream lets validate and run create the stream when missing,
	// with the settings below; otherwise it must exist.
	CreateStream bool          `mapstructure:"create_stream"`
	Replicas     int           `mapstructure:"replicas"`
	Retention    string        `mapstructure:"retention"`
	Discard      string        `mapstructure:"discard"`
	MaxAge       time.Duration `mapstructure:"max_age"`
	MaxBytes     int64         `mapstructure:"max_bytes"`
	// DuplicateWindow is JetStream's de-duplication window by Nats-Msg-Id.
	DuplicateWindow time.Duration `mapstructure:"duplicate_window"`
	// MaxPending bounds the messages published and not yet acknowledged.
	MaxPending int `mapstructure:"max_pending"`
	// AckTimeout is how long a publish may wait for its PubAck before the
	// server counts as unreachable and tandem retries from its checkpoint.
	AckTimeout time.Duration `mapstructure:"ack_timeout"`
	TLS        NATSTLSConfig `mapstructure:"tls"`
	// CredsFile is a NATS credentials file (JWT and NKey seed).
	CredsFile string `mapstructure:"creds_file"`
	// User, Password and Token authenticate without a creds file; set them
	// from the environment (TANDEM_NATS_USER, TANDEM_NATS_PASSWORD,
	// TANDEM_NATS_TOKEN) rather than in the file.
	User     string `mapstructure:"user"`
	Password string `mapstructure:"password"`
	Token    string `mapstructure:"token"`
}

// NATSTLSConfig is the TLS of the NATS connection; any field set turns it
// on.
type NATSTLSConfig struct {
	CAFile   string `mapstructure:"ca_file"`
	CertFile string `mapstructure:"cert_file"`
	KeyFile  string `mapstructure:"key_file"`
}

// Enabled reports whether changes are published to NATS.
func (n NATSConfig) Enabled() bool { return n.URL != "" }

// PublishBackfill reports whether copied rows are published (default yes).
func (n NATSConfig) PublishBackfill() bool { return n.Backfill == nil || *n.Backfill }

// NewShape reports whether messages carry the new schema's rows.
func (n NATSConfig) NewShape() bool { return n.Shape == "new" }

// StreamOnly reports a migration whose only target is the stream.
func (c *Config) StreamOnly() bool { return c.NATS.Enabled() && c.Target.DSN == "" }

var nonToken = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

func (c *Config) applyNATSDefaults() {
	n := &c.NATS
	if !n.Enabled() {
		return
	}
	if n.Stream == "" {
		n.Stream = "TANDEM_" + strings.ToUpper(nonToken.ReplaceAllString(c.Name, "_"))
	}
	if n.Subject == "" {
		n.Subject = "tandem." + nonToken.ReplaceAllString(c.Name, "_")
	}
	if n.Shape == "" {
		n.Shape = "new"
		if c.Target.DSN == "" {
			n.Shape = "old"
		}
	}
	if n.Replicas == 0 {
		n.Replicas = 1
	}
	if n.Retention == "" {
		n.Retention = "limits"
	}
	if n.Discard == "" {
		n.Discard = "new"
	}
	if n.DuplicateWindow == 0 {
		n.DuplicateWindow = 2 * time.Minute
	}
	if n.MaxPending == 0 {
		n.MaxPending = 4096
	}
	if n.AckTimeout == 0 {
		n.AckTimeout = 10 * time.Second
	}
}

var (
	subjectRe = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
	streamRe  = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
)

// validateNATS checks the nats: section; a section without url is an
// error, not a silent no-op.
func (c *Config) validateNATS(add func(field, format string, args ...any)) {
	n := c.NATS
	if !n.Enabled() {
		if n != (NATSConfig{}) {
			add("nats.url", "required when the nats section is set (or set TANDEM_NATS_URL), e.g. nats://127.0.0.1:4222; remove the section to publish nothing")
		}
		return
	}
	for _, u := range strings.Split(n.URL, ",") {
		pu, err := url.Parse(strings.TrimSpace(u))
		if err != nil || pu.Host == "" || (pu.Scheme != "nats" && pu.Scheme != "tls") {
			add("nats.url", "%q is not a server URL: use nats://host:4222 or tls://host:4222, several separated by commas", RedactDSN(strings.TrimSpace(u)))
			continue
		}
		if _, ok := pu.User.Password(); ok {
			add("nats.url", "carries a password: set TANDEM_NATS_USER and TANDEM_NATS_PASSWORD instead, so it stays out of files and logs")
		}
	}
	if !streamRe.MatchString(n.Stream) {
		add("nats.stream", "%q is not a stream name: use letters, digits, _ and - (max 64)", n.Stream)
	}
	if !subjectRe.MatchString(n.Subject) {
		add("nats.subject", "%q is not a subject prefix: dot-separated tokens of letters, digits, _ and -, no wildcards, e.g. tandem.orders", n.Subject)
	}
	switch n.Shape {
	case "old":
	case "new":
		if c.Target.DSN == "" {
			add("nats.shape", "new needs target.dsn (the mapping is evaluated by the new database); use old for a migration whose only target is the stream")
		}
	default:
		add("nats.shape", "%q is not one of new, old", n.Shape)
	}
	switch n.Retention {
	case "limits", "interest", "workqueue":
	default:
		add("nats.retention", "%q is not one of limits, interest, workqueue", n.Retention)
	}
	switch n.Discard {
	case "new", "old":
	default:
		add("nats.discard", "%q is not one of new (a full stream stalls tandem: nothing is lost), old (a full stream drops its oldest messages)", n.Discard)
	}
	if n.MaxAge > 0 && n.DuplicateWindow > n.MaxAge {
		add("nats.duplicate_window", "%s is longer than nats.max_age (%s); JetStream refuses that: shorten it", fmtDuration(n.DuplicateWindow), fmtDuration(n.MaxAge))
	}
	if (n.TLS.CertFile == "") != (n.TLS.KeyFile == "") {
		add("nats.tls", "cert_file and key_file go together: set both for a client certificate, or neither")
	}
	if n.Password != "" && n.User == "" {
		add("nats.user", "required with nats.password (TANDEM_NATS_USER)")
	}
	if n.CredsFile != "" && (n.User != "" || n.Token != "") {
		add("nats.creds_file", "set either a creds file or user/password or a token, not several")
	}
	if c.StreamOnly() {
		if c.Backfill.IsEnabled() {
			add("backfill.enabled", "the copy of existing rows keeps its progress on the new database, and this migration has none (target.dsn is empty: the stream is its only target); set backfill.enabled: false")
		}
		if c.Verify.Continuous {
			add("verify.continuous", "needs target.dsn; set it to false for a migration whose only target is the stream")
		}
	}
}

func (c *Config) natsDurationBounds() []durationBound {
	if !c.NATS.Enabled() {
		return nil
	}
	n := c.NATS
	return []durationBound{
		{field: "nats.max_age", value: n.MaxAge, min: time.Minute, max: 100 * 365 * 24 * time.Hour, off: true},
		// JetStream's own floor is 100ms; below a second a retry after a
		// lost ack would already miss it.
		{field: "nats.duplicate_window", value: n.DuplicateWindow, min: time.Second, max: 7 * 24 * time.Hour},
		{field: "nats.ack_timeout", value: n.AckTimeout, min: 100 * time.Millisecond, max: 10 * time.Minute},
	}
}

func (c *Config) natsSizeBounds() []sizeBound {
	if !c.NATS.Enabled() {
		return nil
	}
	n := c.NATS
	return []sizeBound{
		{field: "nats.replicas", value: float64(n.Replicas), min: 1, max: 5},
		{field: "nats.max_bytes", value: float64(n.MaxBytes), min: 0, max: 1 << 50, unit: "bytes"},
		{field: "nats.max_pending", value: float64(n.MaxPending), min: 1, max: 1 << 20},
	}
}
