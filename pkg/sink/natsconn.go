package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tandem-migrate/tandem/pkg/config"
)

// natsConnectTimeout bounds the dial of one server; a silent link is
// noticed there, and later by the ack timeout.
const natsConnectTimeout = 5 * time.Second

// ConnectNATS opens a connection to the servers of cfg with its TLS and
// credentials. role names the connection in the server's monitoring
// (tandem <migration> <role>). The connection reconnects by itself but
// buffers nothing while disconnected: a publish then fails at once, and
// the pipeline retries from its checkpoint rather than trusting a buffer
// that a crash would lose.
func ConnectNATS(ctx context.Context, cfg config.NATSConfig, migration, role string, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name("tandem " + migration + " " + role),
		nats.Timeout(natsConnectTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.ReconnectBufSize(-1),
		nats.PingInterval(10 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from NATS; publishing waits until it is back", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("reconnected to NATS", "server", c.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { log.Warn("NATS error", "err", err) }),
	}
	t := cfg.TLS
	if t.CAFile != "" {
		opts = append(opts, nats.RootCAs(t.CAFile))
	}
	if t.CertFile != "" {
		opts = append(opts, nats.ClientCert(t.CertFile, t.KeyFile))
	}
	switch {
	case cfg.CredsFile != "":
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	case cfg.User != "":
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	case cfg.Token != "":
		opts = append(opts, nats.Token(cfg.Token))
	}
	type result struct {
		nc  *nats.Conn
		err error
	}
	// nats.Connect takes no context; a cancelled start must not wait for
	// every server's dial.
	done := make(chan result, 1)
	go func() {
		nc, err := nats.Connect(cfg.URL, opts...)
		done <- result{nc, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, &StreamError{Retry: retryableConnect(r.err), Err: fmt.Errorf("nats.url: cannot connect to %s: %w; check that the server runs and the TLS and credentials settings (nats.tls, nats.creds_file, TANDEM_NATS_USER/PASSWORD/TOKEN)", config.RedactDSN(cfg.URL), r.err)}
		}
		return r.nc, nil
	case <-ctx.Done():
		go func() {
			if r := <-done; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// retryableConnect tells a server that is not there (yet) from a
// configuration the server refuses, which no retry fixes.
func retryableConnect(err error) bool {
	return !errors.Is(err, nats.ErrAuthorization) && !errors.Is(err, nats.ErrAuthExpired) &&
		!errors.Is(err, nats.ErrAuthRevoked) && !errors.Is(err, nats.ErrSecureConnRequired)
}

// StreamError is a failure of the JetStream sink. Retry says whether the
// pipeline should start again from its checkpoint (a server down, a
// stream full, an ack that did not come) or stop (a stream that is not
// tandem's, credentials refused).
type StreamError struct {
	Retry bool
	Err   error
}

func (e *StreamError) Error() string { return e.Err.Error() }
func (e *StreamError) Unwrap() error { return e.Err }
