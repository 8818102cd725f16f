package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// The memory phase runs the real tandem binary, so its resident set is its
// own and not the benchmark process's.

// binaryTandem is one `tandem run` process.
type binaryTandem struct {
	cmd     *exec.Cmd
	logPath string
	done    chan error
	exited  bool
	err     error
}

func startBinary(bin, cfgPath, logPath string) (*binaryTandem, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("tandem log: %w", err)
	}
	cmd := exec.Command(bin, "run", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// TANDEM_* variables override the config file; a developer's own must
	// not redirect the benchmark.
	cmd.Env = cleanEnv("TANDEM_")
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	t := &binaryTandem{cmd: cmd, logPath: logPath, done: make(chan error, 1)}
	go func() {
		err := cmd.Wait()
		logFile.Close()
		t.done <- err
	}()
	return t, nil
}

func (t *binaryTandem) pid() int { return t.cmd.Process.Pid }

func (t *binaryTandem) logTail() string {
	b, _ := os.ReadFile(t.logPath)
	if len(b) > 4<<10 {
		b = b[len(b)-4<<10:]
	}
	return string(b)
}

func (t *binaryTandem) alive() error {
	if !t.exited {
		select {
		case t.err = <-t.done:
			t.exited = true
		default:
			return nil
		}
	}
	return fmt.Errorf("tandem exited (%v):\n%s", t.err, t.logTail())
}

// stop sends SIGTERM, tandem's clean stop, and waits; SIGKILL after 30s.
func (t *binaryTandem) stop() error {
	if t.exited {
		return nil
	}
	if err := t.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal tandem: %w", err)
	}
	select {
	case t.err = <-t.done:
		t.exited = true
		return t.err
	case <-time.After(30 * time.Second):
		_ = t.cmd.Process.Kill()
		<-t.done
		t.exited = true
		return errors.New("tandem did not stop within 30s of SIGTERM; killed")
	}
}

// rssResult is one single-transaction run.
type rssResult struct {
	Rows                 int
	PayloadBytes         int
	BaselineRSS, PeakRSS int64         // bytes: idle and streaming, VmHWM
	InsertTime           time.Duration // the old side's INSERT ... SELECT
	ApplyTime            time.Duration // source commit to visible on the new side
	CPU                  time.Duration // tandem process, whole run
}

// rssPayload makes 1 KiB of text per row, below the TOAST threshold (about
// 2 KiB), so each row really crosses the stream in full.
const rssPayload = `repeat(md5(g::text), 32)`

// rssRun streams one transaction of rows fat rows through a fresh tandem
// process and reports its peak resident set.
func (e *streamEnv) rssRun(ctx context.Context, dir string, rows int) (*rssResult, error) {
	bin, err := e.tandemBinary(dir)
	if err != nil {
		return nil, err
	}
	cfg, err := e.tandemConfig("rss", "fat")
	if err != nil {
		return nil, err
	}
	yaml := fmt.Sprintf(`source: {dsn: %q, slot: rss, publication: rss}
target: {dsn: %q}
backfill: {enabled: false}
tables:
  - source: public.fat
`, cfg.Source.DSN, cfg.Target.DSN)
	cfgPath := filepath.Join(dir, fmt.Sprintf("rss-%d.yaml", rows))
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o644); err != nil {
		return nil, fmt.Errorf("write tandem config: %w", err)
	}
	// Empty on both sides before the slot exists, so nothing replicates it.
	for side, conn := range map[string]*pgx.Conn{"old": e.oldDB, "new": e.newDB} {
		if _, err := conn.Exec(ctx, "TRUNCATE fat; CHECKPOINT"); err != nil {
			return nil, fmt.Errorf("empty fat on the %s side: %w", side, err)
		}
	}

	t, err := startBinary(bin, cfgPath, filepath.Join(dir, fmt.Sprintf("tandem-rss-%d.log", rows)))
	if err != nil {
		return nil, err
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = t.stop()
		}
		if err := e.teardownTandem(context.WithoutCancel(ctx), cfg); err != nil {
			fmt.Fprintf(os.Stderr, "rss teardown: %v\n", err)
		}
		// A million fat rows on each side is gigabytes of disk.
		_, _ = e.oldDB.Exec(context.WithoutCancel(ctx), "TRUNCATE fat")
		_, _ = e.newDB.Exec(context.WithoutCancel(ctx), "TRUNCATE fat")
	}()
	if err := e.waitSlot(ctx, "rss", t.alive, time.Minute); err != nil {
		return nil, err
	}
	// Let start-up allocations settle before taking the idle baseline.
	time.Sleep(time.Second)
	res := &rssResult{Rows: rows, PayloadBytes: 1024}
	if res.BaselineRSS, _, err = procMemory(t.pid()); err != nil {
		return nil, err
	}

	start := time.Now()
	if _, err := e.oldDB.Exec(ctx, `INSERT INTO fat (id, payload) SELECT g, `+rssPayload+` FROM generate_series(1, $1::int8) g`, rows); err != nil {
		return nil, fmt.Errorf("insert %d rows: %w", rows, err)
	}
	committed := time.Now()
	res.InsertTime = committed.Sub(start)

	// One source transaction is one target transaction: the last row being
	// visible means all of them are.
	deadline := time.Now().Add(10 * time.Minute)
	for {
		if err := t.alive(); err != nil {
			return nil, err
		}
		var done bool
		if err := e.newDB.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM fat WHERE id = $1)`, rows).Scan(&done); err != nil {
			return nil, fmt.Errorf("poll new side: %w", err)
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the %d-row transaction did not reach the new side within 10 minutes:\n%s", rows, t.logTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
	res.ApplyTime = time.Since(committed)
	_, res.PeakRSS, err = procMemory(t.pid())
	if err != nil {
		return nil, err
	}
	res.CPU = procCPU(t.pid())

	var n int64
	if err := e.newDB.QueryRow(ctx, `SELECT count(*) FROM fat WHERE length(payload) = 1024`).Scan(&n); err != nil {
		return nil, fmt.Errorf("count on new side: %w", err)
	}
	if n != int64(rows) {
		return nil, fmt.Errorf("new side has %d complete fat rows, want %d", n, rows)
	}
	stopped = true
	if err := t.stop(); err != nil {
		return nil, fmt.Errorf("stop tandem: %w\n%s", err, t.logTail())
	}
	if strings.Contains(t.logTail(), "level=ERROR") {
		return nil, fmt.Errorf("tandem logged errors:\n%s", t.logTail())
	}
	return res, nil
}
