// Package config holds tandem's configuration as plain structs. It knows
// nothing about viper or files: cmd/tandem fills a Config, then calls
// ApplyDefaults and Validate. Validate names the offending field, because an
// ops engineer reads the error, not the code.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Config is one migration: one source, one target, one slot.
type Config struct {
	// Name identifies this migration in checkpoints and metrics; defaults to
	// the slot name.
	Name       string           `mapstructure:"name"`
	Source     SourceConfig     `mapstructure:"source"`
	Target     TargetConfig     `mapstructure:"target"`
	Checkpoint CheckpointConfig `mapstructure:"checkpoint"`
	Metrics    MetricsConfig    `mapstructure:"metrics"`
	Control    ControlConfig    `mapstructure:"control"`
	Apply      ApplyConfig      `mapstructure:"apply"`
	Backfill   BackfillConfig   `mapstructure:"backfill"`
	Verify     VerifyConfig     `mapstructure:"verify"`
	Reverse    ReverseConfig    `mapstructure:"reverse"`
	Cutover    CutoverConfig    `mapstructure:"cutover"`
	NATS       NATSConfig       `mapstructure:"nats"`
	Tables     []TableConfig    `mapstructure:"tables"`
	Log        LogConfig        `mapstructure:"log"`
}

type SourceConfig struct {
	DSN         string `mapstructure:"dsn"`
	Slot        string `mapstructure:"slot"`
	Publication string `mapstructure:"publication"`
	// CreatePublication lets tandem create the publication when missing
	// (FOR TABLE of the configured source tables). Default true.
	CreatePublication *bool `mapstructure:"create_publication"`
	// ReceiveTimeout declares the replication link dead when nothing, not
	// even a keepalive, arrives for this long; tandem then reconnects.
	ReceiveTimeout time.Duration `mapstructure:"receive_timeout"`
	// SkipOrigin names the replication origin whose transactions this
	// stream skips: the other direction's writes. Derived, not configured.
	SkipOrigin string `mapstructure:"-"`
}

type TargetConfig struct {
	DSN string `mapstructure:"dsn"`
}

type CheckpointConfig struct {
	// Store is "target" (a table in schema tandem of the new database, written
	// in the same transaction as the rows: exactly once) or "file" (written
	// after the target commit: at least once, replays are idempotent).
	Store string `mapstructure:"store"`
	Path  string `mapstructure:"path"`
}

type MetricsConfig struct {
	Listen string `mapstructure:"listen"`
	// ReadyMaxLag is how far behind a streaming tandem may be and still
	// answer /healthz with 200 (ready).
	ReadyMaxLag time.Duration `mapstructure:"ready_max_lag"`
}

// ControlConfig is where `tandem run` takes pause, resume and limit
// changes (control.go).
type ControlConfig struct {
	// Socket is the unix socket's path; empty picks a default (see
	// pkg/control).
	Socket string `mapstructure:"socket"`
	// Listen, when set, also serves the control surface on TCP, and only
	// to requests carrying the bearer token in TokenFile.
	Listen    string `mapstructure:"listen"`
	TokenFile string `mapstructure:"token_file"`
}

type ApplyConfig struct {
	// BatchChanges caps the statements pipelined in one round trip.
	BatchChanges int `mapstructure:"batch_changes"`
	// CommitChanges and CommitInterval bound one target transaction that may
	// group several source transactions.
	CommitChanges  int           `mapstructure:"commit_changes"`
	CommitInterval time.Duration `mapstructure:"commit_interval"`
	// RetryMin/RetryMax bound the exponential backoff after a lost database.
	RetryMin time.Duration `mapstructure:"retry_min"`
	RetryMax time.Duration `mapstructure:"retry_max"`
	// ShutdownTimeout bounds the final flush on SIGINT/SIGTERM.
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout"`
	// StatementTimeout bounds each call tandem makes to the new database
	// while applying (a batch, a chunk's COPY, a commit), so a link that
	// goes silent is noticed; the apply session's statement_timeout too.
	StatementTimeout time.Duration `mapstructure:"statement_timeout"`
	// ReplicationRole is the session_replication_role of the sessions that
	// write the new database: "replica" (default) applies the way
	// PostgreSQL's own apply worker does, so foreign keys and ordinary
	// triggers do not fire for replicated rows; "origin" lets them fire,
	// for a target role that may not set the parameter.
	ReplicationRole string `mapstructure:"session_replication_role"`
	// Origin is the replication origin the apply session tags its writes
	// with. Derived, not configured.
	Origin string `mapstructure:"-"`
	// OriginRequired makes a role that may not use origins an error rather
	// than a warning: the reverse stream's writes must be recognisable, or
	// the forward stream would send them back. Derived, not configured.
	OriginRequired bool `mapstructure:"-"`
}

// Replica reports whether target sessions run as replicas (the default).
func (a ApplyConfig) Replica() bool { return a.ReplicationRole != "origin" }

type BackfillConfig struct {
	Enabled *bool `mapstructure:"enabled"`
	// ChunkRows is the number of rows read per chunk (keyset page).
	ChunkRows int `mapstructure:"chunk_rows"`
	// ChunkBytes ends a chunk early once its rows reach this size, so wide
	// rows cannot make a chunk (held in memory until applied) huge.
	ChunkBytes int64 `mapstructure:"chunk_bytes"`
	// Workers is the number of chunks read in parallel.
	Workers int `mapstructure:"workers"`
	// RowsPerSecond and BytesPerSecond cap the copy; 0 means no cap.
	RowsPerSecond  float64 `mapstructure:"rows_per_second"`
	BytesPerSecond float64 `mapstructure:"bytes_per_second"`
	// MaxLag pauses the copy while replication lag exceeds it; 0 disables.
	MaxLag time.Duration `mapstructure:"max_lag"`
	// MaxActiveBackends pauses while the old database has more active
	// backends than this; 0 disables.
	MaxActiveBackends int `mapstructure:"max_active_backends"`
	// ThrottleQuery is a user SQL probe run on the old database; while it
	// returns true (or a non-zero number) the copy pauses.
	ThrottleQuery string `mapstructure:"throttle_query"`
	// ThrottleCheckInterval is how often the throttle signals are sampled.
	ThrottleCheckInterval time.Duration `mapstructure:"throttle_check_interval"`
	// ProgressInterval is how often each table's copy logs its progress.
	ProgressInterval time.Duration `mapstructure:"progress_interval"`
}

// IsEnabled reports whether backfill runs (default true).
func (b BackfillConfig) IsEnabled() bool { return b.Enabled == nil || *b.Enabled }

type VerifyConfig struct {
	// Continuous turns on shadow comparison inside `tandem run`.
	Continuous    bool    `mapstructure:"continuous"`
	ChunkRows     int     `mapstructure:"chunk_rows"`
	RowsPerSecond float64 `mapstructure:"rows_per_second"`
}

type LogConfig struct {
	Level  string `mapstructure:"level"`
	Format string `mapstructure:"format"`
}

// TableConfig maps one source table onto one target table.
type TableConfig struct {
	Source string `mapstructure:"source"`
	Target string `mapstructure:"target"`
	// Key names the target columns that identify a row; defaults to the
	// target's primary key.
	Key []string `mapstructure:"key"`
	// Filter is a SQL predicate over source columns.
	Filter string `mapstructure:"filter"`
	// Columns maps target column -> SQL expression over source columns.
	Columns map[string]string `mapstructure:"columns"`
	// Drop lists source columns not to copy by name.
	Drop []string `mapstructure:"drop"`
	// Reverse is the inverse mapping used after cutover; nil inverts
	// renames and copies only.
	Reverse *TableReverse `mapstructure:"reverse"`
}

// ApplyDefaults fills every zero field with its documented default.
func (c *Config) ApplyDefaults() {
	if c.Name == "" {
		c.Name = c.Source.Slot
	}
	if c.Source.CreatePublication == nil {
		t := true
		c.Source.CreatePublication = &t
	}
	if c.Checkpoint.Store == "" {
		c.Checkpoint.Store = "target"
	}
	if c.Apply.BatchChanges == 0 {
		c.Apply.BatchChanges = 1000
	}
	if c.Apply.CommitChanges == 0 {
		c.Apply.CommitChanges = 20000
	}
	if c.Apply.CommitInterval == 0 {
		c.Apply.CommitInterval = 200 * time.Millisecond
	}
	if c.Apply.RetryMin == 0 {
		c.Apply.RetryMin = 500 * time.Millisecond
	}
	if c.Apply.RetryMax == 0 {
		c.Apply.RetryMax = 30 * time.Second
	}
	if c.Apply.ShutdownTimeout == 0 {
		c.Apply.ShutdownTimeout = 10 * time.Second
	}
	if c.Apply.StatementTimeout == 0 {
		c.Apply.StatementTimeout = 5 * time.Minute
	}
	if c.Metrics.ReadyMaxLag == 0 {
		c.Metrics.ReadyMaxLag = 5 * time.Minute
	}
	if c.Source.ReceiveTimeout == 0 {
		// The server's own wal_sender_timeout default.
		c.Source.ReceiveTimeout = time.Minute
	}
	if c.Apply.ReplicationRole == "" {
		c.Apply.ReplicationRole = "replica"
	}
	if c.Backfill.ChunkRows == 0 {
		c.Backfill.ChunkRows = 20000
	}
	if c.Backfill.ChunkBytes == 0 {
		c.Backfill.ChunkBytes = 32 << 20
	}
	if c.Backfill.Workers == 0 {
		c.Backfill.Workers = 2
	}
	if c.Backfill.ThrottleCheckInterval == 0 {
		c.Backfill.ThrottleCheckInterval = time.Second
	}
	if c.Backfill.ProgressInterval == 0 {
		c.Backfill.ProgressInterval = 10 * time.Second
	}
	if c.Verify.ChunkRows == 0 {
		c.Verify.ChunkRows = 10000
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	for i := range c.Tables {
		if c.Tables[i].Target == "" {
			c.Tables[i].Target = c.Tables[i].Source
		}
	}
	c.applyCutoverDefaults()
	c.applyNATSDefaults()
}

var identRe = regexp.MustCompile(`^[a-z_][a-z0-9_$]{0,62}$`)

// Validate checks the config without touching any database. Every problem
// is reported, each naming its field and the fix.
func (c *Config) Validate() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.Source.DSN == "" {
		add("source.dsn", "required (or set TANDEM_SOURCE_DSN), e.g. postgres://user@host:5432/db")
	} else if err := checkDSN(c.Source.DSN); err != nil {
		add("source.dsn", "%v", err)
	}
	if c.Target.DSN == "" {
		if !c.NATS.Enabled() {
			add("target.dsn", "required (or set TANDEM_TARGET_DSN), e.g. postgres://user@host:5432/db; it may be empty only when nats.url is set and the stream is the only target")
		}
	} else if err := checkDSN(c.Target.DSN); err != nil {
		add("target.dsn", "%v", err)
	}
	if !identRe.MatchString(c.Source.Slot) {
		add("source.slot", "%q is not a valid slot name: use lower-case letters, digits and _ (max 63)", c.Source.Slot)
	}
	if !identRe.MatchString(c.Source.Publication) {
		add("source.publication", "%q is not a valid publication name: use lower-case letters, digits and _ (max 63)", c.Source.Publication)
	}
	switch c.Checkpoint.Store {
	case "target":
	case "file":
		if c.Checkpoint.Path == "" {
			add("checkpoint.path", "required when checkpoint.store is file")
		}
	default:
		add("checkpoint.store", "%q is not one of target, file", c.Checkpoint.Store)
	}
	switch c.Apply.ReplicationRole {
	case "replica", "origin":
	default:
		add("apply.session_replication_role", "%q is not one of replica, origin", c.Apply.ReplicationRole)
	}
	c.validateControl(add)
	c.validateCutover(add)
	// Every duration and size field has a range (bounds.go).
	c.checkBounds(add)
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		add("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		add("log.format", "%q is not one of text, json", c.Log.Format)
	}
	c.validateNATS(add)
	if len(c.Tables) == 0 {
		add("tables", "at least one table mapping is required")
	}
	seen := map[string]bool{}
	for i, t := range c.Tables {
		f := fmt.Sprintf("tables[%d]", i)
		if t.Source == "" {
			add(f+".source", "required, e.g. public.orders")
			continue
		}
		if _, _, err := SplitQualified(t.Source); err != nil {
			add(f+".source", "%v", err)
		}
		if _, _, err := SplitQualified(t.Target); err != nil {
			add(f+".target", "%v", err)
		}
		if seen[t.Target] {
			add(f+".target", "%s is the target of two mappings; each target table takes one source", t.Target)
		}
		seen[t.Target] = true
		for col, expr := range t.Columns {
			if strings.TrimSpace(expr) == "" {
				add(fmt.Sprintf("%s.columns.%s", f, col), "empty expression; name a source column or write a SQL expression")
			}
		}
	}
	return errors.Join(errs...)
}

func checkDSN(dsn string) error {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		if _, err := url.Parse(dsn); err != nil {
			return fmt.Errorf("not a valid URL: %v", RedactDSN(err.Error()))
		}
		return nil
	}
	if strings.Contains(dsn, "=") {
		return nil // key=value form; pgx parses it at connect time
	}
	return errors.New("expected postgres://user@host:port/db or key=value pairs")
}

// SplitQualified splits "schema.table" (default schema public). Names are
// taken literally (lower-case unquoted SQL names); quote nothing.
func SplitQualified(name string) (schema, table string, err error) {
	parts := strings.Split(name, ".")
	switch len(parts) {
	case 1:
		schema, table = "public", parts[0]
	case 2:
		schema, table = parts[0], parts[1]
	default:
		return "", "", fmt.Errorf("%q: expected schema.table", name)
	}
	if schema == "" || table == "" {
		return "", "", fmt.Errorf("%q: expected schema.table", name)
	}
	return schema, table, nil
}

var passwordInURL = regexp.MustCompile(`(://[^:/@\s]+:)[^@\s]*@`)
var passwordKV = regexp.MustCompile(`(?i)(password\s*=\s*)('[^']*'|\S+)`)

// RedactDSN hides any password in a DSN or in text that contains one, so
// logs and errors never carry it.
func RedactDSN(s string) string {
	s = passwordInURL.ReplaceAllString(s, "${1}xxxxx@")
	return passwordKV.ReplaceAllString(s, "${1}xxxxx")
}

// Qualified is name as schema.table (public when no schema is given), the
// one spelling tandem's own records use for a table.
func Qualified(name string) string {
	s, t, err := SplitQualified(name)
	if err != nil {
		return name
	}
	return s + "." + t
}
