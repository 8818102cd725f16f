package sink_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-migrate/tandem/internal/natstest"
	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/sink"
)

func natsConfig(url string) config.NATSConfig {
	c := config.Config{Name: "m1", NATS: config.NATSConfig{URL: url, CreateStream: true}}
	c.ApplyDefaults()
	c.NATS.AckTimeout = 2 * time.Second
	return c.NATS
}

// publishTx publishes one transaction of n messages at commit LSN lsn.
func publishTx(ctx context.Context, t *testing.T, js *sink.JetStream, cfg config.NATSConfig, lsn change.LSN, n int) error {
	t.Helper()
	for i := 0; i < n; i++ {
		o := sink.Out{Subject: cfg.Subject + ".public.t", Data: []byte(fmt.Sprintf(`{"seq":%d}`, i)), CommitLSN: lsn, Seq: i,
			Last: i == n-1, EndLSN: lsn + 8, Table: "public.t", Op: "insert"}
		if err := js.Publish(ctx, o); err != nil {
			return err
		}
	}
	return nil
}

// TestJetStreamResume publishes, reopens and finds its place; a message
// slipped into the stream by someone else breaks the chain, and the
// sink refuses to go on past it.
func TestJetStreamResume(t *testing.T) {
	ctx := context.Background()
	srv := natstest.Start(t)
	cfg := natsConfig(srv.URL())
	log := slog.New(slog.DiscardHandler)
	m := sink.NewJetStreamMetrics(prometheus.NewRegistry())
	js, err := sink.OpenJetStream(ctx, cfg, "m1", log, m)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := js.Resume(ctx); err != nil || ok {
		t.Fatalf("new stream: ok=%v err=%v", ok, err)
	}
	for i, lsn := range []change.LSN{100, 200, 300} {
		if err := publishTx(ctx, t, js, cfg, lsn, i+1); err != nil {
			t.Fatal(err)
		}
	}
	if end, err := js.Flush(ctx); err != nil || end != 308 {
		t.Fatalf("flush: %v %v", end, err)
	}
	js.Close()

	js, err = sink.OpenJetStream(ctx, cfg, "m1", log, m)
	if err != nil {
		t.Fatal(err)
	}
	defer js.Close()
	p, ok, err := js.Resume(ctx)
	if err != nil || !ok || p.CommitLSN != 300 || p.Seq != 2 || !p.Last || p.EndLSN != 308 {
		t.Fatalf("resume: %+v ok=%v err=%v", p, ok, err)
	}
	// Someone else publishes into the stream: tandem's next message no
	// longer follows its predecessor and is refused.
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Request(cfg.Subject+".public.t", []byte("{}"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	err = publishTx(ctx, t, js, cfg, 400, 1)
	if err == nil {
		_, err = js.Flush(ctx)
	}
	var se *sink.StreamError
	if !errors.As(err, &se) || !se.Retry {
		t.Fatalf("chain broken by a foreign message: got %v", err)
	}
	// And its last message is not tandem's: a restart says so and stops.
	if _, _, err := js.Resume(ctx); !errors.As(err, &se) || se.Retry {
		t.Fatalf("resume after a foreign message: got %v", err)
	}
}

// TestJetStreamOutage stops the server under the publisher: publishing
// fails as retryable, and after a restart on the same store a new sink
// finds the last acknowledged transaction.
func TestJetStreamOutage(t *testing.T) {
	ctx := context.Background()
	srv := natstest.Start(t)
	cfg := natsConfig(srv.URL())
	log := slog.New(slog.DiscardHandler)
	js, err := sink.OpenJetStream(ctx, cfg, "m1", log, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := js.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if err := publishTx(ctx, t, js, cfg, 100, 50); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	err = publishTx(ctx, t, js, cfg, 200, 50)
	if err == nil {
		_, err = js.Flush(ctx)
	}
	var se *sink.StreamError
	if !errors.As(err, &se) || !se.Retry {
		t.Fatalf("publish with the server down: got %v, want a retryable error", err)
	}
	js.Close()
	if _, err := sink.OpenJetStream(ctx, cfg, "m1", log, nil); !errors.As(err, &se) || !se.Retry {
		t.Fatalf("connect with the server down: got %v", err)
	}
	srv.Restart()
	js, err = sink.OpenJetStream(ctx, cfg, "m1", log, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer js.Close()
	p, ok, err := js.Resume(ctx)
	if err != nil || !ok || p.CommitLSN != 100 || !p.Last {
		t.Fatalf("resume after the outage: %+v ok=%v err=%v", p, ok, err)
	}
	if err := publishTx(ctx, t, js, cfg, 200, 50); err != nil {
		t.Fatal(err)
	}
	if end, err := js.Flush(ctx); err != nil || end != 208 {
		t.Fatalf("flush after the outage: %v %v", end, err)
	}
}
