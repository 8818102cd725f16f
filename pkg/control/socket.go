// Package control serves the live backfill controls (pause, resume,
// limits) of a running `tandem run` away from the metrics listener: on a
// unix socket only its owner may open (the gh-ost way), and optionally
// on TCP behind a bearer token. It also holds the client the `tandem
// backfill` commands use.
package control

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
)

// RunDir is where a service manager gives tandem a private runtime
// directory (systemd's RuntimeDirectory=tandem). It is used when it exists
// and is writable; tandem does not create it.
const RunDir = "/run/tandem"

// ErrNoSocketDir means none of the default socket directories can be
// used; the daemon then runs without a control socket and says so.
var ErrNoSocketDir = errors.New("no usable directory for the control socket")

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// socketFile is the socket's file name for a migration: its name, with
// anything that could leave the directory replaced.
func socketFile(name string) string {
	return unsafeName.ReplaceAllString(name, "_") + ".sock"
}

// privateTempDir is the per-user directory under the OS temp dir. A
// shared /tmp lets anyone create names in it, so the directory must be
// ours and closed to others before a socket goes into it.
func privateTempDir() string {
	return filepath.Join(os.TempDir(), "tandem-"+strconv.Itoa(os.Getuid()))
}

// DaemonSocket picks where `tandem run` puts its socket: the configured
// path, else RunDir when it is writable, else $XDG_RUNTIME_DIR/tandem,
// else a private directory under the OS temp dir. It creates the
// directory it picks (except RunDir) with mode 0700.
func DaemonSocket(configured, name string) (string, error) {
	if configured != "" {
		if err := os.MkdirAll(filepath.Dir(configured), 0o700); err != nil {
			return "", fmt.Errorf("control.socket: cannot create its directory: %w", err)
		}
		return configured, nil
	}
	file := socketFile(name)
	var tried []string
	if writable(RunDir) {
		return filepath.Join(RunDir, file), nil
	}
	tried = append(tried, RunDir+" (missing or not writable)")
	if xdg := os.Getenv("XDG_RUNTIME_DIR"); xdg != "" {
		dir := filepath.Join(xdg, "tandem")
		err := privateDir(dir)
		if err == nil {
			return filepath.Join(dir, file), nil
		}
		tried = append(tried, err.Error())
	}
	dir := privateTempDir()
	err := privateDir(dir)
	if err == nil {
		return filepath.Join(dir, file), nil
	}
	tried = append(tried, err.Error())
	return "", fmt.Errorf("%w: %v; set control.socket to a path in a writable directory", ErrNoSocketDir, tried)
}

// ClientSockets lists where a `tandem run` for this migration may have put
// its socket, most likely first: the daemon may run as another user (a
// service account) than the operator, so the client cannot predict which
// default the daemon picked and looks in each.
func ClientSockets(configured, name string) []string {
	if configured != "" {
		return []string{configured}
	}
	file := socketFile(name)
	out := []string{filepath.Join(RunDir, file)}
	if xdg := os.Getenv("XDG_RUNTIME_DIR"); xdg != "" {
		out = append(out, filepath.Join(xdg, "tandem", file))
	}
	out = append(out, filepath.Join(privateTempDir(), file))
	// Another user's private temp dir: root reaching the service
	// account's daemon.
	others, _ := filepath.Glob(filepath.Join(os.TempDir(), "tandem-*", file))
	for _, o := range others {
		if o != out[len(out)-1] {
			out = append(out, o)
		}
	}
	return out
}

func writable(dir string) bool {
	fi, err := os.Stat(dir)
	return err == nil && fi.IsDir() && syscall.Access(dir, 2 /* W_OK */) == nil
}

// privateDir creates dir with mode 0700 if needed and checks that it is a
// real directory owned by this user and closed to everyone else.
func privateDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s: %w", dir, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory", dir)
	case ok && int(st.Uid) != os.Getuid():
		return fmt.Errorf("%s belongs to uid %d, not to this user (%d)", dir, st.Uid, os.Getuid())
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("%s has mode %04o; it must be 0700 (chmod 700 %s)", dir, fi.Mode().Perm(), dir)
	}
	return nil
}
