package metrics

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Liveness says whether tandem's loops make progress, for /livez. Each
// loop joins while it runs and beats as it goes; the process is live while
// no joined loop has gone longer than the bound without a beat. A loop
// that ended (the stream torn down for a retry) leaves, so an outage that
// tandem retries by itself never makes it look dead: the retry loop beats
// while it waits.
type Liveness struct {
	mu    sync.Mutex
	loops map[*Beat]struct{}
	stale atomic.Int64 // nanoseconds; 0 means the default
}

// DefaultStale is the bound when none was set.
const DefaultStale = 10 * time.Minute

// Beat is one loop's heartbeat.
type Beat struct {
	name string
	last atomic.Int64
	l    *Liveness
}

// SetStale sets how long a joined loop may go without a beat.
func (l *Liveness) SetStale(d time.Duration) { l.stale.Store(int64(d)) }

// Stale is the bound in force.
func (l *Liveness) Stale() time.Duration {
	if d := time.Duration(l.stale.Load()); d > 0 {
		return d
	}
	return DefaultStale
}

// Join registers a loop and beats once.
func (l *Liveness) Join(name string) *Beat {
	b := &Beat{name: name, l: l}
	b.Beat()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.loops == nil {
		l.loops = map[*Beat]struct{}{}
	}
	l.loops[b] = struct{}{}
	return b
}

// Beat records progress. It is cheap enough for a loop's every turn.
func (b *Beat) Beat() { b.last.Store(time.Now().UnixNano()) }

// Leave unregisters the loop; a nil Beat does nothing.
func (b *Beat) Leave() {
	if b == nil {
		return
	}
	b.l.mu.Lock()
	defer b.l.mu.Unlock()
	delete(b.l.loops, b)
}

// Check names the loops that have not beaten within the bound at now.
func (l *Liveness) Check(now time.Time) error {
	stale := l.Stale()
	l.mu.Lock()
	var stuck []string
	for b := range l.loops {
		if quiet := now.Sub(time.Unix(0, b.last.Load())); quiet > stale {
			stuck = append(stuck, fmt.Sprintf("%s made no progress for %s", b.name, quiet.Round(time.Second)))
		}
	}
	l.mu.Unlock()
	if len(stuck) == 0 {
		return nil
	}
	sort.Strings(stuck)
	return fmt.Errorf("%s (bound %s)", strings.Join(stuck, "; "), stale)
}

// ServeHTTP answers /livez: 200 while live, 503 naming the stuck loops.
func (l *Liveness) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	if err := l.Check(time.Now()); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("stuck: " + err.Error() + "\n"))
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}
