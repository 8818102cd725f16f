package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"time"
)

// lagStats summarises the probe delays of one run.
type lagStats struct {
	N                   int
	P50, P99, Max, Mean time.Duration
}

func (s lagStats) String() string {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return fmt.Sprintf("p50 %.1f ms, p99 %.1f ms, max %.1f ms, mean %.1f ms (n=%d)", ms(s.P50), ms(s.P99), ms(s.Max), ms(s.Mean), s.N)
}

// percentile is the nearest-rank percentile of sorted samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func summarise(lags []time.Duration) lagStats {
	slices.Sort(lags)
	var sum time.Duration
	for _, l := range lags {
		sum += l
	}
	s := lagStats{N: len(lags)}
	if len(lags) > 0 {
		s.P50, s.P99, s.Max = percentile(lags, 0.50), percentile(lags, 0.99), lags[len(lags)-1]
		s.Mean = sum / time.Duration(len(lags))
	}
	return s
}

// measureLag runs a rate-limited pgbench for the configured duration while
// one probe row per interval is inserted into lagprobe on the old side. A
// probe's lag is the time from its INSERT's commit being acknowledged on
// the old side to the NOTIFY the new side's trigger sends when the applying
// transaction commits. Both ends are timed by this process, on one clock.
// alive is polled so a replicator that dies fails the run at once.
func (e *streamEnv) measureLag(ctx context.Context, firstID int64, alive func() error) (lagStats, pgbenchRun, error) {
	sz := e.sizes
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	listener, err := e.new.Connect(ctx, streamDB)
	if err != nil {
		return lagStats{}, pgbenchRun{}, err
	}
	defer listener.Close(context.Background())
	if _, err := listener.Exec(ctx, "LISTEN lagprobe"); err != nil {
		return lagStats{}, pgbenchRun{}, fmt.Errorf("listen: %w", err)
	}
	prober, err := e.old.Connect(ctx, streamDB)
	if err != nil {
		return lagStats{}, pgbenchRun{}, err
	}
	defer prober.Close(context.Background())

	var mu sync.Mutex
	sent := map[int64]time.Time{}
	seen := map[int64]time.Time{}
	arrived := make(chan struct{}, 1)
	listenCtx, stopListening := context.WithCancel(ctx)
	var listening sync.WaitGroup
	listening.Go(func() {
		for {
			n, err := listener.WaitForNotification(listenCtx)
			if err != nil {
				return // stopListening, or a lost connection: missing probes report it
			}
			at := time.Now()
			id, err := strconv.ParseInt(n.Payload, 10, 64)
			if err != nil {
				continue
			}
			mu.Lock()
			seen[id] = at
			mu.Unlock()
			select {
			case arrived <- struct{}{}:
			default:
			}
		}
	})
	defer func() {
		stopListening()
		listening.Wait()
	}()

	type result struct {
		run pgbenchRun
		err error
	}
	loadDone := make(chan result, 1)
	go func() {
		run, err := e.runPgbench(ctx, nil, "-n", "-c", strconv.Itoa(sz.clients), "-j", "2",
			"-R", strconv.Itoa(sz.lagRate), "-T", strconv.Itoa(int(sz.lagDuration/time.Second)))
		loadDone <- result{run, err}
	}()

	tick := time.NewTicker(sz.lagEvery)
	defer tick.Stop()
	end := time.Now().Add(sz.lagDuration)
	for id := firstID; time.Now().Before(end); id++ {
		if err := alive(); err != nil {
			return lagStats{}, pgbenchRun{}, err
		}
		if _, err := prober.Exec(ctx, `INSERT INTO lagprobe (id, ts) VALUES ($1, clock_timestamp())`, id); err != nil {
			return lagStats{}, pgbenchRun{}, fmt.Errorf("insert probe %d: %w", id, err)
		}
		at := time.Now()
		mu.Lock()
		sent[id] = at
		mu.Unlock()
		select {
		case <-ctx.Done():
			return lagStats{}, pgbenchRun{}, ctx.Err()
		case <-tick.C:
		}
	}
	load := <-loadDone
	if load.err != nil {
		return lagStats{}, load.run, load.err
	}

	// Every probe must arrive: a lost row would be a bug, not a long lag.
	deadline := time.After(time.Minute)
	for {
		mu.Lock()
		missing := 0
		for id := range sent {
			if _, ok := seen[id]; !ok {
				missing++
			}
		}
		mu.Unlock()
		if missing == 0 {
			break
		}
		if err := alive(); err != nil {
			return lagStats{}, load.run, err
		}
		select {
		case <-arrived:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			return lagStats{}, load.run, fmt.Errorf("%d of %d probe rows never reached the new side", missing, len(sent))
		case <-ctx.Done():
			return lagStats{}, load.run, ctx.Err()
		}
	}

	mu.Lock()
	defer mu.Unlock()
	lags := make([]time.Duration, 0, len(sent))
	for id, at := range sent {
		// The walsender may send a commit as soon as it is flushed, a hair
		// before the old side's acknowledgement reaches this process.
		lags = append(lags, max(0, seen[id].Sub(at)))
	}
	if len(lags) == 0 {
		return lagStats{}, load.run, errors.New("no probe was sent")
	}
	return summarise(lags), load.run, nil
}
