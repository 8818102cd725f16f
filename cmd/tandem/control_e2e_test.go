package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-migrate/tandem/internal/testkit"
	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/control"
)

// controlState asks the daemon on sock for its backfill state, waiting
// for the socket to appear while the daemon starts.
func controlState(t *testing.T, d *daemon, sock string) control.State {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := control.NewClient(&config.Config{Name: "test", Control: config.ControlConfig{Socket: sock}}, control.Target{})
		if err == nil {
			var st control.State
			if st, err = c.Get(context.Background()); err == nil {
				return st
			}
		}
		if derr := d.alive(); derr != nil || time.Now().After(deadline) {
			t.Fatalf("control socket %s: %v (daemon: %v)", sock, err, derr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestOperatorSurface drives a running tandem the way an operator does,
// during a throttled backfill: `tandem backfill` through the control
// socket (mode 0600), the metrics listener refusing the old /backfill
// controls, progress lines in the log, and `tandem status --watch`.
func TestOperatorSurface(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	src := testkit.Connect(t, env.SourceDSN)
	if err := testkit.Seed(ctx, src, testkit.NewWorkload(src, 31), 40000); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Exec(ctx, "ANALYZE orders"); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "ops.sock")
	metrics := fmt.Sprintf("127.0.0.1:%d", closedPort(t))
	cfg := writeConfig(t, env.YAMLWithBackfill("ops", "{enabled: true, chunk_rows: 500, rows_per_second: 1000, progress_interval: 1s}",
		fmt.Sprintf("metrics: {listen: %q}\ncontrol: {socket: %q}\n", metrics, sock)))
	d := startDaemon(t, cfg)
	if st := controlState(t, d, sock); st.RowsPerSecond != 1000 || st.ChunkRows != 500 || st.Paused {
		t.Fatalf("state at start: %+v", st)
	}
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket mode %s, want a socket with 0600", fi.Mode())
	}

	t.Run("progress lines", func(t *testing.T) {
		waitLog(t, d, regexp.MustCompile(`msg="copy progress".*table="public.orders -> public.orders_v2" rows_copied=\d+ estimated_rows=40000 percent=[0-9.]+ rows_per_second=\d+ eta=\S+ throttled=no rate_cap=1000`), time.Minute)
	})

	t.Run("metrics listener refuses control", func(t *testing.T) {
		for _, method := range []string{http.MethodPost, http.MethodGet} {
			var resp *http.Response
			deadline := time.Now().Add(30 * time.Second)
			for {
				req, _ := http.NewRequest(method, "http://"+metrics+"/backfill?pause", strings.NewReader(url.Values{"rows_per_second": {"0"}}.Encode()))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				if resp, err = http.DefaultClient.Do(req); err == nil || time.Now().After(deadline) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusGone {
				t.Fatalf("%s /backfill on the metrics listener: %s, want 410 Gone", method, resp.Status)
			}
		}
		if st := controlState(t, d, sock); st.Paused || st.RowsPerSecond != 1000 {
			t.Fatalf("the metrics listener changed the limits: %+v", st)
		}
	})

	t.Run("backfill commands", func(t *testing.T) {
		run := func(args ...string) cliResult {
			t.Helper()
			return tandemCmd(t, append(append([]string{"backfill"}, args...), "--config", cfg)...)
		}
		if r := run("pause"); r.code != 0 || !strings.Contains(r.stdout, "held back: paused") {
			t.Fatalf("pause: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		waitLog(t, d, regexp.MustCompile(`msg="copy progress".* throttled=paused`), 30*time.Second)
		r := run("set", "--rows-per-second", "2500", "--chunk-rows", "1000", "--json")
		var st control.State
		if err := json.Unmarshal([]byte(r.stdout), &st); r.code != 0 || err != nil {
			t.Fatalf("set: exit %d, %v\n%s%s", r.code, err, r.stdout, r.stderr)
		}
		if !st.Paused || st.RowsPerSecond != 2500 || st.ChunkRows != 1000 || st.ChunkBytes != 32<<20 {
			t.Fatalf("after set: %+v, want still paused, 2500 rows/s, 1000-row chunks, chunk_bytes kept", st)
		}
		if r := run("set", "--chunk-rows", "0"); r.code != 1 || !strings.Contains(r.stderr, "chunk_rows") {
			t.Fatalf("set --chunk-rows 0: exit %d\n%s", r.code, r.stderr)
		}
		if r := run("set"); r.code != 1 || !strings.Contains(r.stderr, "nothing to set") {
			t.Fatalf("set with no flag: exit %d\n%s", r.code, r.stderr)
		}
		if r := run("resume"); r.code != 0 || !strings.Contains(r.stdout, "backfill running") || !strings.Contains(r.stdout, "2500 rows/s") {
			t.Fatalf("resume: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if st := controlState(t, d, sock); st.Paused || st.RowsPerSecond != 2500 {
			t.Fatalf("after resume: %+v", st)
		}
	})

	t.Run("status watch", func(t *testing.T) {
		r := tandemCmd(t, "status", "--watch", "--interval", "300ms", "--count", "3", "--config", cfg)
		if r.code != 0 || strings.Count(r.stdout, "(Ctrl-C to stop)") != 3 {
			t.Fatalf("status --watch --count 3: exit %d, want 3 frames\n%s%s", r.code, r.stdout, r.stderr)
		}
		if !regexp.MustCompile(`behind the source \(lag [0-9.]+m?s, from tandem's metrics\)`).MatchString(r.stdout) {
			t.Fatalf("no lag in seconds in the frames:\n%s", r.stdout)
		}
		r = tandemCmd(t, "status", "--count", "2", "--interval", "200ms", "--json", "--config", cfg)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if r.code != 0 || len(lines) != 2 {
			t.Fatalf("status --count 2 --json: exit %d, %d lines\n%s%s", r.code, len(lines), r.stdout, r.stderr)
		}
		for _, l := range lines {
			var frame map[string]any
			if err := json.Unmarshal([]byte(l), &frame); err != nil {
				t.Fatalf("frame %q: %v", l, err)
			}
			if _, ok := frame["lag_bytes"]; !ok {
				t.Fatalf("frame without lag_bytes: %s", l)
			}
			if _, ok := frame["lag_seconds"]; !ok {
				t.Fatalf("frame without lag_seconds: %s", l)
			}
		}

		// Until a signal: a couple of frames, then Ctrl-C ends it with 0.
		cmd := exec.Command(tandemBin, "status", "--watch", "--interval", "200ms", "--config", cfg)
		cmd.Env = childEnv()
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		frames := 0
		for frames < 2 && sc.Scan() {
			if strings.Contains(sc.Text(), "(Ctrl-C to stop)") {
				frames++
			}
		}
		if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		go func() {
			for sc.Scan() {
			}
		}()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if frames != 2 || err != nil {
				t.Fatalf("status --watch after %d frames and SIGINT: %v, want exit 0", frames, err)
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatal("status --watch still running 30s after SIGINT")
		}
	})

	if code, _ := d.terminate(30 * time.Second); code != 0 {
		t.Fatalf("tandem run exit code %d after SIGTERM", code)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("control socket left behind after SIGTERM: %v", err)
	}
	if r := tandemCmd(t, "backfill", "show", "--config", cfg); r.code != 1 || !strings.Contains(r.stderr, "is `tandem run` running") {
		t.Fatalf("backfill show with no daemon: exit %d\n%s", r.code, r.stderr)
	}
}

// TestControlListenNeedsToken: control.listen without control.token_file
// is refused before anything connects, naming the field and the fix.
func TestControlListenNeedsToken(t *testing.T) {
	cfg := writeConfig(t, `source: {dsn: "postgres://u@127.0.0.1:1/db", slot: s, publication: s}
target: {dsn: "postgres://u@127.0.0.1:1/db"}
control: {listen: "127.0.0.1:0"}
tables: [{source: public.t}]
`)
	for _, sub := range []string{"validate", "run"} {
		r := tandemCmd(t, sub, "--config", cfg)
		if r.code != 1 || !strings.Contains(r.stderr, "control.listen: set control.token_file") {
			t.Fatalf("%s: exit %d\n%s", sub, r.code, r.stderr)
		}
	}
}

// TestWrongPasswordHint: a refused password comes with a hint about
// passwords and PGPASSFILE, and the password itself is never printed.
func TestWrongPasswordHint(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	if err := env.Source.Exec(ctx, "postgres", `CREATE ROLE hinted LOGIN PASSWORD 'the-right-one'`); err != nil {
		t.Fatal(err)
	}
	hba := filepath.Join(env.Source.DataDir(), "pg_hba.conf")
	b, err := os.ReadFile(hba)
	if err != nil {
		t.Fatal(err)
	}
	rules := "local all hinted scram-sha-256\nhost all hinted 127.0.0.1/32 scram-sha-256\nhost all hinted ::1/128 scram-sha-256\n"
	if err := os.WriteFile(hba, append([]byte(rules), b...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := env.Source.Exec(ctx, "postgres", `SELECT pg_reload_conf()`); err != nil {
		t.Fatal(err)
	}
	const secret = "Wr0ng-S3cret-4711"
	wrong := strings.Replace(env.SourceDSN, "postgres://postgres@", "postgres://hinted:"+secret+"@", 1)
	cfg := writeConfig(t, strings.Replace(env.YAML("pwhint", ""), env.SourceDSN, wrong, 1))
	for _, sub := range []string{"validate", "status"} {
		r := tandemCmd(t, sub, "--config", cfg)
		if r.code == 0 || !strings.Contains(r.stderr, "hint: the server refused the password") || !strings.Contains(r.stderr, "PGPASSFILE") {
			t.Fatalf("%s with a wrong password: exit %d, want a hint about the password\n%s", sub, r.code, r.stderr)
		}
		if strings.Contains(r.stdout+r.stderr, secret) {
			t.Fatalf("%s printed the password:\n%s%s", sub, r.stdout, r.stderr)
		}
	}
}

// TestHelpPages: every command's --help has a description, examples,
// exit codes, and (where it reads a config) the environment variables.
func TestHelpPages(t *testing.T) {
	cmds := [][]string{{}, {"run"}, {"validate"}, {"status"}, {"verify"}, {"teardown"}, {"version"},
		{"backfill"}, {"backfill", "show"}, {"backfill", "pause"}, {"backfill", "resume"}, {"backfill", "set"}}
	for _, c := range cmds {
		r := tandemCmd(t, append(c, "--help")...)
		name := strings.Join(append([]string{"tandem"}, c...), " ")
		if r.code != 0 {
			t.Fatalf("%s --help: exit %d\n%s", name, r.code, r.stderr)
		}
		want := []string{"Examples:\n  ", "Exit codes:\n  0  "}
		if len(c) > 0 && c[0] != "version" {
			want = append(want, "Environment:\n  TANDEM_")
		}
		if len(c) > 0 && c[0] != "version" && c[0] != "backfill" {
			want = append(want, "PGPASSFILE")
		}
		for _, w := range want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("%s --help lacks %q:\n%s", name, w, r.stdout)
			}
		}
	}
}
