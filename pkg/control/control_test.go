package control

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tandem-migrate/tandem/pkg/backfill"
	"github.com/tandem-migrate/tandem/pkg/config"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func testConfig(t *testing.T) *config.Config {
	t.Helper()
	return &config.Config{Name: "ctl_test", Control: config.ControlConfig{Socket: filepath.Join(t.TempDir(), "ctl.sock")}}
}

// serve starts the control surface for cfg on a fresh Control and stops
// it when the test ends.
func serve(t *testing.T, cfg *config.Config) (*Server, *backfill.Control) {
	t.Helper()
	ctl := backfill.NewControl(backfill.Limits{ChunkRows: 100, ChunkBytes: 1 << 20, RowsPerSecond: 50})
	s, err := Listen(cfg, ctl.Handler(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return s, ctl
}

// TestSocket: the socket is mode 0600, the client pauses and changes
// limits through it, and it is gone once the daemon stops.
func TestSocket(t *testing.T) {
	cfg := testConfig(t)
	ctx := context.Background()
	ctl := backfill.NewControl(backfill.Limits{ChunkRows: 100, ChunkBytes: 1 << 20})
	s, err := Listen(cfg, ctl.Handler(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Serve(sctx) }()

	fi, err := os.Stat(cfg.Control.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %s, want a socket with 0600", fi.Mode())
	}
	c, err := NewClient(cfg, Target{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Change(ctx, url.Values{"pause": {""}, "chunk_rows": {"7"}})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Paused || st.ChunkRows != 7 || !ctl.Limits().Paused || ctl.Limits().ChunkRows != 7 {
		t.Fatalf("after pause and chunk_rows=7: answer %+v, control %+v", st, ctl.Limits())
	}
	if _, err := c.Change(ctx, url.Values{"chunk_rows": {"0"}}); err == nil || !strings.Contains(err.Error(), "chunk_rows") {
		t.Fatalf("chunk_rows=0 accepted or not named: %v", err)
	}
	if st, err := c.Get(ctx); err != nil || st.Throttled != "paused" {
		t.Fatalf("Get = %+v, %v; want paused", st, err)
	}

	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(cfg.Control.Socket); !os.IsNotExist(err) {
		t.Fatalf("socket still there after the daemon stopped: %v", err)
	}
	if _, err := NewClient(cfg, Target{}); err == nil || !strings.Contains(err.Error(), "is `tandem run` running for it on this host") {
		t.Fatalf("NewClient with no daemon: %v", err)
	}
	if _, err := c.Get(ctx); err == nil || !strings.Contains(err.Error(), "is `tandem run` still running") {
		t.Fatalf("Get with no daemon: %v", err)
	}
}

// TestSocketOwned: a second daemon refuses a socket a live one serves,
// and takes over one a killed daemon left behind; it never removes a
// file that is not a socket.
func TestSocketOwned(t *testing.T) {
	cfg := testConfig(t)
	serve(t, cfg)
	if _, err := Listen(cfg, http.NotFoundHandler(), quiet); err == nil || !strings.Contains(err.Error(), "another `tandem run`") {
		t.Fatalf("second Listen on a live socket: %v", err)
	}

	stale := testConfig(t)
	ln, err := net.Listen("unix", stale.Control.Socket)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // as after kill -9
	ln.Close()
	serve(t, stale)

	file := testConfig(t)
	if err := os.WriteFile(file.Control.Socket, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(file, http.NotFoundHandler(), quiet); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(file.Control.Socket); string(b) != "x" {
		t.Fatal("the regular file was changed")
	}
}

// TestTCPNeedsToken: on control.listen, requests without the token are
// refused and leave the limits alone; the client with the token file
// gets through.
func TestTCPNeedsToken(t *testing.T) {
	cfg := testConfig(t)
	cfg.Control.Listen = "127.0.0.1:0"
	cfg.Control.TokenFile = filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(cfg.Control.TokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, ctl := serve(t, cfg)
	addr := s.Addrs()[1]
	for _, auth := range []string{"", "Bearer wrong", "s3cret"} {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+Path+"?pause", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("Authorization %q: %s, want 401", auth, resp.Status)
		}
	}
	if ctl.Limits().Paused {
		t.Fatal("paused by a request without the token")
	}
	c, err := NewClient(cfg, Target{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := c.Change(context.Background(), url.Values{"pause": {""}}); err != nil || !st.Paused {
		t.Fatalf("pause with the token: %+v, %v", st, err)
	}

	empty := testConfig(t)
	empty.Control.Listen = "127.0.0.1:0"
	empty.Control.TokenFile = filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(empty.Control.TokenFile, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(empty, http.NotFoundHandler(), quiet); err == nil || !strings.Contains(err.Error(), "control.token_file") {
		t.Fatalf("empty token file: %v", err)
	}
	if _, err := os.Lstat(empty.Control.Socket); !os.IsNotExist(err) {
		t.Fatal("the socket was left behind by a Listen that failed")
	}
}

// TestDefaultSocketDir: without control.socket the daemon uses a private
// directory (0700, this user's) and the client finds the socket there.
func TestDefaultSocketDir(t *testing.T) {
	if writable(RunDir) {
		t.Skipf("%s is writable here, so it is the default; this test covers the fallbacks", RunDir)
	}
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	t.Setenv("XDG_RUNTIME_DIR", "")
	cfg := &config.Config{Name: "orders/v2"}
	s, _ := serve(t, cfg)
	want := filepath.Join(tmp, "tandem-"+strconv.Itoa(os.Getuid()), "orders_v2.sock")
	if s.Socket() != want {
		t.Fatalf("socket %s, want %s", s.Socket(), want)
	}
	fi, err := os.Stat(filepath.Dir(want))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory: %v, mode %v; want 0700", err, fi.Mode())
	}
	c, err := NewClient(cfg, Target{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(context.Background()); err != nil {
		t.Fatal(err)
	}

	// A private directory someone opened up is refused, not used.
	if err := os.Chmod(filepath.Dir(want), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(filepath.Dir(want), 0o700) })
	if _, err := DaemonSocket("", "other"); err == nil || !strings.Contains(err.Error(), "must be 0700") {
		t.Fatalf("DaemonSocket with an open directory: %v", err)
	}
}
