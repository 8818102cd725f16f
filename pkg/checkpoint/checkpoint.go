// Package checkpoint stores how far a migration has got: the source LSN up to
// which every transaction is durable on the target, and each mapping's
// backfill progress. It owns schema tandem on the target: every statement
// on tandem.checkpoint and tandem.backfill is here. The target store writes
// the position in the same transaction as the rows it covers (exactly once); the file
// store writes it after the target commits (at least once; the sink's
// keyed upserts and deletes make a replay converge to the same rows).
package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/config"
)

// Schema is the target schema that holds tandem's own tables.
const Schema = "tandem"

// Store loads and saves the stream position of one migration.
type Store interface {
	// Load returns the saved position; ok is false when none was saved.
	Load(ctx context.Context) (lsn change.LSN, ok bool, err error)
	// TxStatement returns the statement that saves lsn inside the caller's
	// target transaction, with text-format parameters; ok is false when the
	// store does not live on the target.
	TxStatement(lsn change.LSN) (sql string, params [][]byte, ok bool)
	// SaveCommitted saves lsn after the target transaction committed (a
	// no-op for the target store).
	SaveCommitted(ctx context.Context, lsn change.LSN) error
}

var (
	_ Store = (*TargetStore)(nil)
	_ Store = (*FileStore)(nil)
)

// EnsureSchema creates tandem's tables on the target. Idempotent.
func EnsureSchema(ctx context.Context, q catalog.Querier) error {
	_, err := q.Exec(ctx, `
CREATE SCHEMA IF NOT EXISTS tandem;
CREATE TABLE IF NOT EXISTS tandem.checkpoint (
	name       text PRIMARY KEY,
	lsn        pg_lsn NOT NULL,
	updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS tandem.backfill (
	name        text NOT NULL,
	source      text NOT NULL,
	target      text NOT NULL,
	cursor      text[],
	done        boolean NOT NULL DEFAULT false,
	rows_copied bigint NOT NULL DEFAULT 0,
	started_at  timestamptz NOT NULL DEFAULT now(),
	updated_at  timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (name, source, target)
);
CREATE TABLE IF NOT EXISTS tandem.verify_pass (
	name        text NOT NULL,
	target      text NOT NULL,
	compared    bigint NOT NULL,
	differing   bigint NOT NULL,
	lsn         pg_lsn NOT NULL,
	finished_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (name, target)
);
CREATE TABLE IF NOT EXISTS tandem.activity (
	name   text NOT NULL,
	target text NOT NULL,
	lsn    pg_lsn NOT NULL,
	PRIMARY KEY (name, target)
)`)
	if err != nil {
		return fmt.Errorf("create schema tandem on target: %w (the target user needs CREATE on the database)", err)
	}
	return nil
}

// ForConfig opens the store a config names; tgt serves the target store.
// Everything that reads or writes the stream position opens it here, so
// the daemon, status and verify agree on where it is.
func ForConfig(cfg *config.Config, tgt catalog.Querier) Store {
	if cfg.Checkpoint.Store == "file" {
		return &FileStore{Path: cfg.Checkpoint.Path}
	}
	return &TargetStore{Name: cfg.Name, Conn: tgt}
}

// TargetStore keeps the position in tandem.checkpoint on the target.
type TargetStore struct {
	Name string
	// Conn is used by Load; SaveTx uses the caller's transaction.
	Conn catalog.Querier
}

func (s *TargetStore) Load(ctx context.Context) (change.LSN, bool, error) {
	var lsn change.LSN
	err := s.Conn.QueryRow(ctx, `SELECT lsn FROM tandem.checkpoint WHERE name = $1`, s.Name).Scan(&lsn)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("load checkpoint %q from target: %w", s.Name, err)
	}
	return lsn, true, nil
}

const saveSQL = `INSERT INTO tandem.checkpoint (name, lsn, updated_at) VALUES ($1::text, $2::pg_lsn, now())
ON CONFLICT (name) DO UPDATE SET lsn = EXCLUDED.lsn, updated_at = now()`

func (s *TargetStore) TxStatement(lsn change.LSN) (string, [][]byte, bool) {
	return saveSQL, [][]byte{[]byte(s.Name), []byte(lsn.String())}, true
}

func (s *TargetStore) SaveCommitted(context.Context, change.LSN) error { return nil }

// Delete removes the migration's checkpoint and backfill progress
// (teardown); a target tandem never wrote has nothing to remove.
func Delete(ctx context.Context, q catalog.Querier, name string) error {
	var err error
	for _, table := range []string{"checkpoint", "backfill", "verify_pass", "activity"} {
		if _, err = q.Exec(ctx, `DELETE FROM tandem.`+table+` WHERE name = $1`, name); err != nil {
			break
		}
	}
	if Missing(err) {
		return nil
	}
	return err
}

// FileStore keeps the position in a local file, replaced atomically.
type FileStore struct {
	Path string
}

func (f *FileStore) Load(context.Context) (change.LSN, bool, error) {
	b, err := os.ReadFile(f.Path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read checkpoint file: %w", err)
	}
	var lsn change.LSN
	if err := lsn.Scan(strings.TrimSpace(string(b))); err != nil {
		return 0, false, fmt.Errorf("checkpoint file %s is corrupt (%q): restore it or delete it to start from the slot's position: %w", f.Path, b, err)
	}
	return lsn, true, nil
}

func (f *FileStore) TxStatement(change.LSN) (string, [][]byte, bool) { return "", nil, false }

// SaveCommitted writes to a temporary file, fsyncs it, renames it over the
// old one and fsyncs the directory, so a crash leaves either the old or the
// new position, never a torn one.
func (f *FileStore) SaveCommitted(_ context.Context, lsn change.LSN) error {
	dir := filepath.Dir(f.Path)
	tmp, err := os.CreateTemp(dir, ".tandem-ckpt-*")
	if err != nil {
		return fmt.Errorf("write checkpoint in %s: %w", dir, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(lsn.String() + "\n"); err != nil {
		tmp.Close()
		return fmt.Errorf("write checkpoint %s: %w (is the disk full?)", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("fsync checkpoint %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close checkpoint %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), f.Path); err != nil {
		return fmt.Errorf("replace checkpoint %s: %w", f.Path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
