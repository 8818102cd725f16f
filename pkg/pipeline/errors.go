package pipeline

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tandem-migrate/tandem/pkg/decoder"
	"github.com/tandem-migrate/tandem/pkg/sink"
)

// FatalError stops the daemon: retrying cannot help until a human acts.
type FatalError struct{ Err error }

func (e *FatalError) Error() string { return e.Err.Error() }
func (e *FatalError) Unwrap() error { return e.Err }

// Retryable reports whether err is worth a retry from the checkpoint: a lost
// connection, a restarting server, a slot still held by a dead process,
// resource exhaustion. Constraint, data and mapping errors are not: they
// would fail the same way again.
func Retryable(err error) bool {
	if err == nil {
		return false
	}
	var fatal *FatalError
	var lost *decoder.SlotLostError
	if errors.As(err, &fatal) || errors.As(err, &lost) {
		return false
	}
	var silent *decoder.SilentError
	if errors.As(err, &silent) || isRetryError(err) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "08"), // connection exception
			strings.HasPrefix(pgErr.Code, "53"),          // insufficient resources: disk full, too many connections
			strings.HasPrefix(pgErr.Code, "57"),          // operator intervention: shutdown, cannot connect now
			strings.HasPrefix(pgErr.Code, "58"),          // system error (I/O)
			pgErr.Code == "40001", pgErr.Code == "40P01", // serialization, deadlock
			pgErr.Code == "55006", // slot active for another PID (a killed daemon's walsender)
			pgErr.Code == "55P03": // lock not available
			return true
		}
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return true
	}
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return true
	}
	msg := err.Error()
	for _, s := range []string{"conn closed", "connection reset", "broken pipe", "unexpected EOF", "connection refused", "receive from source", "server closed the connection"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// resourceHint says, for a database out of resources (SQLSTATE class 53),
// which database and what to do; "" for any other error. Such errors are
// retried, so the hint is what the operator acts on.
func resourceHint(err error) string {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || !strings.HasPrefix(pgErr.Code, "53") {
		return ""
	}
	which := "the old database"
	var apply *sink.ApplyError
	if errors.As(err, &apply) || strings.Contains(err.Error(), "target") {
		which = "the new database"
	}
	what := "is out of a resource (" + pgErr.Code + ")"
	switch pgErr.Code {
	case "53100":
		what = "is out of disk space"
	case "53200":
		what = "is out of memory"
	case "53300":
		what = "has no free connection slot"
	}
	return which + " " + what + ": free some; tandem retries by itself and loses nothing meanwhile"
}
