package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/dial"
	"github.com/tandem-migrate/tandem/pkg/sink"
)

// checkNATS is validate's part for the JetStream sink: the server answers,
// JetStream is on for the account, and the stream exists (or is created,
// when nats.create_stream asks for it) and takes the migration's subjects
// and no one else's messages. It returns what it found as notes.
func checkNATS(ctx context.Context, cfg *config.Config) ([]string, error) {
	if !cfg.NATS.Enabled() {
		return nil, nil
	}
	n := cfg.NATS
	nc, err := sink.ConnectNATS(ctx, n, cfg.Name, "validate", slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("nats.url: %w", err)
	}
	if _, err := js.AccountInfo(ctx); err != nil {
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return nil, fmt.Errorf("nats.url: JetStream is not enabled on %s (or for this account): start nats-server with -js, or enable it for the account", config.RedactDSN(n.URL))
		}
		return nil, fmt.Errorf("nats.url: JetStream does not answer: %w", err)
	}
	st, created, err := sink.EnsureStream(ctx, js, n)
	if err != nil {
		return nil, err
	}
	if created {
		return []string{fmt.Sprintf("created JetStream stream %s (subjects %s.>, %d replica(s), retention %s, duplicate window %s)", n.Stream, n.Subject, n.Replicas, n.Retention, n.DuplicateWindow)}, nil
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("nats.stream: %w", err)
	}
	notes := []string{fmt.Sprintf("JetStream stream %s holds %d message(s) in %d replica(s), duplicate window %s", n.Stream, info.State.Msgs, info.Config.Replicas, info.Config.Duplicates)}
	place, ok, err := sink.LastPlace(ctx, st, info.State, cfg.Name)
	if err != nil {
		return notes, err
	}
	if ok {
		notes = append(notes, fmt.Sprintf("the stream's last message is this migration's, at commit %s (position %d); run resumes after it", place.CommitLSN, place.Seq))
	}
	if info.Config.Retention != jetstream.LimitsPolicy {
		notes = append(notes, "the stream's retention is not limits: consumed messages leave it, and with them the place tandem resumes from after a restart longer than the duplicate window (README, NATS)")
	}
	return notes, nil
}

// preflightStreamOnly is Preflight for a migration whose only target is
// the stream: the old database and NATS.
func preflightStreamOnly(ctx context.Context, cfg *config.Config) ([]string, error) {
	src, err := dial.Open(ctx, cfg.Source.DSN, dial.Short(cfg.Name, "validate"))
	if err != nil {
		return nil, fmt.Errorf("source.dsn: cannot connect to the old database: %s; check host, port, user and that it is running", config.RedactDSN(err.Error()))
	}
	defer closeConn(src)
	errs, notes := sourceChecks(ctx, cfg, src)
	for _, t := range SourceTables(cfg) {
		var found bool
		if err := src.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, t).Scan(&found); err != nil {
			errs = append(errs, fmt.Errorf("source: look up %s: %w", t, err))
		} else if !found {
			errs = append(errs, fmt.Errorf("tables: source table %s does not exist on the old database", t))
		}
	}
	natsNotes, err := checkNATS(ctx, cfg)
	if err != nil {
		errs = append(errs, err)
	}
	return append(notes, natsNotes...), errors.Join(errs...)
}
