// Package pgcluster runs throwaway PostgreSQL clusters for integration tests
// and the demo. Each cluster is a fresh initdb in its own scratch directory,
// listening on 127.0.0.1 on its own port, so tests never touch a PostgreSQL
// server that already runs on the machine.
//
// The harness drives the real server binaries (initdb, pg_ctl, postgres);
// there is deliberately no fake: logical decoding behaviour is exactly what
// the tests exist to pin down.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options configures Start. The zero value is a usable logical-replication
// cluster on a free port in a fresh temporary directory.
type Options struct {
	// Dir is the parent directory under which the cluster's own scratch
	// directory is created. Empty means os.TempDir().
	Dir string
	// Name labels the cluster in its directory name and in error messages,
	// e.g. "source" or "target".
	Name string
	// Port is the TCP port to listen on; 0 picks a free one.
	Port int
	// Settings are extra postgresql.conf parameters. They are written after
	// the harness defaults and therefore override them. Values are given
	// unquoted (e.g. "64MB", "on"); they are quoted when written.
	Settings map[string]string
	// DisableLogical leaves wal_level at replica. Logical decoding is what
	// almost every caller needs, so it is on unless explicitly opted out of;
	// it is spelled as a negative so the zero Options value means "on".
	DisableLogical bool
}

// ErrNotRunning is returned (wrapped) by Kill when there is no live postmaster.
var ErrNotRunning = errors.New("cluster is not running")

// Cluster is a running (or stopped) throwaway PostgreSQL cluster. Its methods
// are not safe for concurrent use with each other; connections made through
// DSN can of course be used concurrently.
type Cluster struct {
	name     string
	binDir   string
	root     string // scratch directory created by Start and removed by Destroy
	dataDir  string
	sockDir  string
	ownSock  bool // sockDir is a separate short directory that Destroy removes
	logFile  string
	port     int
	runAs    *osUser // non-nil when server commands must run as another OS user
	runuser  string  // path of runuser, set together with runAs
	baseConf []byte  // postgresql.conf as initdb wrote it
}

type osUser struct {
	name     string
	uid, gid int
}

const (
	superuser = "postgres"

	// pgCtlTimeout bounds how long pg_ctl waits for startup or shutdown.
	// Crash recovery after Kill on a slow CI machine can take a while.
	pgCtlTimeout = "120"

	// maxSocketPath stays below the smallest sun_path (104 bytes on macOS,
	// 108 on Linux); PostgreSQL refuses to start if the socket path is longer.
	maxSocketPath = 100

	// startAttempts bounds retries when a picked free port was taken by
	// someone else before the server could bind it.
	startAttempts = 5

	// transientRetryWindow is how long StartAgain keeps retrying while the
	// remains of a killed server (shared memory, lock file) are going away.
	transientRetryWindow = 15 * time.Second
)

// Start creates, configures and starts a new cluster. On failure everything
// created so far is removed again and the error includes the tail of the
// server log.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	binDir, err := FindBinDir()
	if err != nil {
		return nil, err
	}
	name := sanitizeName(opts.Name)
	// Reject bad settings before spending a second on initdb.
	if _, err := renderConf(nil, 0, "", true, opts.Settings); err != nil {
		return nil, fmt.Errorf("configure cluster %q: %w", name, err)
	}

	c := &Cluster{name: name, binDir: binDir}
	if os.Geteuid() == 0 {
		// initdb and postgres refuse to run as root.
		if c.runAs, err = lookupServerUser(); err != nil {
			return nil, err
		}
		if c.runuser, err = exec.LookPath("runuser"); err != nil {
			return nil, fmt.Errorf("running as root requires runuser (util-linux) to start PostgreSQL as the %q OS user: %w",
				superuser, err)
		}
	}

	parent := opts.Dir
	if parent == "" {
		parent = os.TempDir()
	} else if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, fmt.Errorf("create parent directory for cluster %q: %w", name, err)
	}
	// Absolute paths: the server commands run in another working directory,
	// and a later chdir by the caller must not move the cluster under us.
	if parent, err = filepath.Abs(parent); err != nil {
		return nil, fmt.Errorf("resolve parent directory for cluster %q: %w", name, err)
	}
	if c.root, err = os.MkdirTemp(parent, "tandem-pg-"+name+"-"); err != nil {
		return nil, fmt.Errorf("create scratch directory for cluster %q: %w", name, err)
	}
	c.dataDir = filepath.Join(c.root, "data")
	c.logFile = filepath.Join(c.root, "server.log")
	c.sockDir = c.root

	ok := false
	defer func() {
		if !ok {
			// Cleanup must happen even when ctx is what made Start fail.
			_ = c.Destroy(context.WithoutCancel(ctx))
		}
	}()

	if len(filepath.Join(c.sockDir, ".s.PGSQL.65535")) >= maxSocketPath {
		if c.sockDir, err = os.MkdirTemp(shortTempDir(), "tpg-"); err != nil {
			return nil, fmt.Errorf("create socket directory for cluster %q: %w", name, err)
		}
		c.ownSock = true
	}

	if c.runAs != nil {
		if err := c.grantServerUser(ctx); err != nil {
			return nil, err
		}
	}

	if err := c.run(ctx, "initdb",
		"-D", c.dataDir,
		"-A", "trust",
		"-U", superuser,
		"--no-sync", // durability of the initial catalog is irrelevant for a throwaway cluster
		"-E", "UTF8",
		"--locale=C",
	); err != nil {
		return nil, fmt.Errorf("initdb for cluster %q: %w", name, err)
	}
	if c.baseConf, err = os.ReadFile(filepath.Join(c.dataDir, "postgresql.conf")); err != nil {
		return nil, fmt.Errorf("read postgresql.conf of cluster %q: %w", name, err)
	}

	for attempt := 1; ; attempt++ {
		c.port = opts.Port
		if c.port == 0 {
			if c.port, err = FreePort(); err != nil {
				return nil, fmt.Errorf("pick port for cluster %q: %w", name, err)
			}
		}
		if err := c.writeConf(opts); err != nil {
			return nil, err
		}
		logged, err := c.pgCtlStart(ctx)
		if err == nil {
			break
		}
		// A port picked by freePort is only free until someone else binds
		// it; parallel tests make that likely enough to be worth a retry.
		if opts.Port != 0 || attempt == startAttempts || !portConflict(logged) || ctx.Err() != nil {
			return nil, fmt.Errorf("start cluster %q: %w", name, err)
		}
	}

	ok = true
	return c, nil
}

// DSN returns a connection string for database db as the superuser.
func (c *Cluster) DSN(db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", superuser, c.port, url.PathEscape(db))
}

// ReplicationDSN returns a DSN for db that opens a logical replication
// connection (replication=database), as needed by pglogrepl.
func (c *Cluster) ReplicationDSN(db string) string {
	return c.DSN(db) + "&replication=database"
}

// Port returns the TCP port the cluster listens on. It stays the same across
// Stop, Kill, Restart and StartAgain.
func (c *Cluster) Port() int { return c.port }

// Dir returns the cluster's scratch directory; Destroy removes it.
func (c *Cluster) Dir() string { return c.root }

// DataDir returns the PGDATA directory inside Dir.
func (c *Cluster) DataDir() string { return c.dataDir }

// LogFile returns the path of the server log.
func (c *Cluster) LogFile() string { return c.logFile }

// BinDir returns the directory of the server binaries in use.
func (c *Cluster) BinDir() string { return c.binDir }

// Name returns the (sanitized) name given in Options.
func (c *Cluster) Name() string { return c.name }

// Connect opens a new connection to database db as the superuser.
func (c *Cluster) Connect(ctx context.Context, db string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, c.DSN(db))
	if err != nil {
		return nil, fmt.Errorf("connect to cluster %q database %q: %w", c.name, db, err)
	}
	return conn, nil
}

// Exec runs sql on database db over a fresh connection. Without args it uses
// the simple protocol, so sql may contain several statements.
func (c *Cluster) Exec(ctx context.Context, db, sql string, args ...any) error {
	conn, err := c.Connect(ctx, db)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("exec on cluster %q database %q: %w", c.name, db, err)
	}
	return nil
}

// CreateDB creates database name.
func (c *Cluster) CreateDB(ctx context.Context, name string) error {
	return c.Exec(ctx, "postgres", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
}

// Stop shuts the server down cleanly (pg_ctl stop -m fast).
func (c *Cluster) Stop(ctx context.Context) error {
	if err := c.run(ctx, "pg_ctl", "stop", "-D", c.dataDir, "-m", "fast", "-w", "-t", pgCtlTimeout); err != nil {
		return fmt.Errorf("stop cluster %q: %w", c.name, err)
	}
	return nil
}

// Restart stops the server cleanly and starts it again on the same port.
func (c *Cluster) Restart(ctx context.Context) error {
	if err := c.Stop(ctx); err != nil {
		return err
	}
	return c.StartAgain(ctx)
}

// StartAgain starts a cluster that was stopped with Stop or Kill. After Kill
// the server performs crash recovery before accepting connections.
func (c *Cluster) StartAgain(ctx context.Context) error {
	deadline := time.Now().Add(transientRetryWindow)
	for {
		logged, err := c.pgCtlStart(ctx)
		if err == nil {
			return nil
		}
		if !transientStartFailure(logged) || time.Now().After(deadline) {
			return fmt.Errorf("start cluster %q again: %w", c.name, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("start cluster %q again: %w (last attempt: %v)", c.name, ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Running reports whether a live postmaster owns the data directory.
func (c *Cluster) Running() bool {
	pid, err := c.postmasterPID()
	return err == nil && ProcessAlive(pid)
}

// Kill simulates a server crash: it SIGKILLs the postmaster (pid from
// postmaster.pid) and, where the platform lets us find them, all of its
// child processes, then waits until they are gone. Nothing is flushed or
// checkpointed; StartAgain then runs crash recovery.
func (c *Cluster) Kill() error {
	pid, err := c.postmasterPID()
	if err != nil {
		return fmt.Errorf("kill cluster %q: %w", c.name, err)
	}
	if !ProcessAlive(pid) {
		return fmt.Errorf("kill cluster %q: postmaster %d: %w", c.name, pid, ErrNotRunning)
	}
	if err := killProcessTree(pid, 15*time.Second); err != nil {
		return fmt.Errorf("kill cluster %q: %w", c.name, err)
	}
	// The orphaned postmaster is reaped by init, which in containers may take
	// a while or never happen. Until then it is a zombie that still answers
	// kill(pid, 0), and the next postmaster refuses to start because its lock
	// files look live. The process is provably dead, so drop the lock files
	// as a reboot would.
	if waitReaped(pid, 250*time.Millisecond) {
		return nil
	}
	for _, lock := range []string{
		filepath.Join(c.dataDir, "postmaster.pid"),
		filepath.Join(c.sockDir, fmt.Sprintf(".s.PGSQL.%d.lock", c.port)),
	} {
		if err := os.Remove(lock); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("kill cluster %q: remove stale lock file: %w", c.name, err)
		}
	}
	return nil
}

// Destroy stops the server without a checkpoint if it is running and removes
// the cluster's directories. It is idempotent.
func (c *Cluster) Destroy(ctx context.Context) error {
	var errs []error
	if c.Running() {
		err := c.run(ctx, "pg_ctl", "stop", "-D", c.dataDir, "-m", "immediate", "-w", "-t", pgCtlTimeout)
		if err != nil {
			// Removing the directory under a live server would leak the
			// process, so fall back to the big hammer before giving up.
			if kerr := c.Kill(); kerr != nil {
				errs = append(errs, fmt.Errorf("stop cluster %q: %w", c.name, err), kerr)
			}
		}
	}
	if c.root != "" {
		if err := os.RemoveAll(c.root); err != nil {
			errs = append(errs, fmt.Errorf("remove directory of cluster %q: %w", c.name, err))
		}
	}
	if c.ownSock {
		if err := os.RemoveAll(c.sockDir); err != nil {
			errs = append(errs, fmt.Errorf("remove socket directory of cluster %q: %w", c.name, err))
		}
	}
	return errors.Join(errs...)
}

// LogTail returns up to the last maxBytes of the server log, trimmed to
// whole lines; it is meant for attaching to test failures.
func (c *Cluster) LogTail(maxBytes int) string {
	return tailFile(c.logFile, 0, maxBytes)
}

// pgCtlStart starts the server and waits until it accepts connections. It
// returns what the server logged during this attempt, so callers can decide
// whether a failure is worth retrying.
func (c *Cluster) pgCtlStart(ctx context.Context) (string, error) {
	var offset int64
	if fi, err := os.Stat(c.logFile); err == nil {
		offset = fi.Size()
	}
	out, err := c.command(ctx, "pg_ctl", "start", "-D", c.dataDir, "-l", c.logFile, "-w", "-t", pgCtlTimeout).CombinedOutput()
	if err == nil {
		return "", nil
	}
	logged := tailFile(c.logFile, offset, 8<<10)
	return logged, fmt.Errorf("pg_ctl start on port %d: %w\n--- pg_ctl output ---\n%s\n--- server log (%s) ---\n%s",
		c.port, err, strings.TrimSpace(string(out)), c.logFile, logged)
}

// run executes one of the server binaries and folds its output into the
// error, because initdb and pg_ctl explain failures only on stdout/stderr.
func (c *Cluster) run(ctx context.Context, bin string, args ...string) error {
	out, err := c.command(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", bin, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (c *Cluster) command(ctx context.Context, bin string, args ...string) *exec.Cmd {
	path := filepath.Join(c.binDir, bin)
	var cmd *exec.Cmd
	if c.runAs != nil {
		cmd = exec.CommandContext(ctx, c.runuser, append([]string{"-u", c.runAs.name, "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	// The caller's working directory may be unreadable for the server user,
	// which makes postgres complain on every start.
	cmd.Dir = c.root
	cmd.Env = serverEnv()
	// pg_ctl hands the postmaster the log file, not our pipes, but a
	// misbehaving wrapper must not be able to hang the caller forever.
	cmd.WaitDelay = 10 * time.Second
	ownProcessGroup(cmd)
	return cmd
}

// serverEnv strips PG* variables, which developers commonly point at their own
// server (PGDATA, PGPORT, PGHOST...), and forces untranslated messages so the
// log matching in this package works regardless of the user's locale.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_ALL=") || strings.HasPrefix(kv, "LANGUAGE=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C")
}

func (c *Cluster) writeConf(opts Options) error {
	conf, err := renderConf(c.baseConf, c.port, c.sockDir, !opts.DisableLogical, opts.Settings)
	if err != nil {
		return fmt.Errorf("configure cluster %q: %w", c.name, err)
	}
	// The file belongs to the server user; rewriting it in place keeps that
	// ownership and its 0600 mode intact.
	path := filepath.Join(c.dataDir, "postgresql.conf")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("configure cluster %q: %w", c.name, err)
	}
	if _, err := f.Write(conf); err != nil {
		_ = f.Close()
		return fmt.Errorf("configure cluster %q: write %s: %w", c.name, path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("configure cluster %q: close %s: %w", c.name, path, err)
	}
	return nil
}

var settingName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// renderConf appends the harness settings to initdb's postgresql.conf. Later
// lines win in postgresql.conf, so user settings come last.
func renderConf(base []byte, port int, sockDir string, logical bool, extra map[string]string) ([]byte, error) {
	walLevel := "replica"
	if logical {
		walLevel = "logical"
	}
	type kv struct{ k, v string }
	settings := []kv{
		{"listen_addresses", "127.0.0.1"},
		{"port", strconv.Itoa(port)},
		{"unix_socket_directories", sockDir},
		{"wal_level", walLevel},
		{"max_replication_slots", "20"},
		{"max_wal_senders", "20"},
		{"shared_buffers", "128MB"},
		{"max_connections", "200"},
	}
	keys := make([]string, 0, len(extra))
	for k := range extra {
		if !settingName.MatchString(k) {
			return nil, fmt.Errorf("invalid setting name %q", k)
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		settings = append(settings, kv{k, extra[k]})
	}

	var b strings.Builder
	b.Write(base)
	if len(base) > 0 && base[len(base)-1] != '\n' {
		b.WriteByte('\n')
	}
	b.WriteString("\n# Added by tandem pgcluster.\n")
	for _, s := range settings {
		if strings.ContainsAny(s.v, "\n\r") {
			return nil, fmt.Errorf("setting %s: value must not contain newlines", s.k)
		}
		fmt.Fprintf(&b, "%s = %s\n", s.k, quoteConf(s.v))
	}
	return []byte(b.String()), nil
}

// quoteConf quotes every value: postgresql.conf accepts quoted values for
// all parameter types, and it keeps paths and lists from being mis-parsed.
func quoteConf(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	return "'" + strings.ReplaceAll(v, "'", "''") + "'"
}

// portConflict recognises a failed bind in the server log.
func portConflict(logged string) bool {
	return strings.Contains(logged, "could not create any TCP/IP sockets") ||
		strings.Contains(logged, "Address already in use")
}

// transientStartFailure recognises leftovers of a killed server that vanish
// on their own once its last child process has exited.
func transientStartFailure(logged string) bool {
	return strings.Contains(logged, "pre-existing shared memory block") ||
		(strings.Contains(logged, "lock file") && strings.Contains(logged, "already exists")) ||
		portConflict(logged)
}

// FreePort returns a loopback TCP port nothing listens on at the moment
// (another process may take it before the caller does).
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("listen on 127.0.0.1:0: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

var unsafeNameChars = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

func sanitizeName(name string) string {
	name = unsafeNameChars.ReplaceAllString(name, "_")
	if len(name) > 24 {
		name = name[:24]
	}
	if name == "" {
		name = "pg"
	}
	return name
}

// shortTempDir is where socket directories go when the cluster directory is
// too deep for a Unix socket path.
func shortTempDir() string {
	if fi, err := os.Stat("/tmp"); err == nil && fi.IsDir() {
		return "/tmp"
	}
	return os.TempDir()
}

func lookupServerUser() (*osUser, error) {
	u, err := user.Lookup(superuser)
	if err != nil {
		return nil, fmt.Errorf("running as root, so PostgreSQL must run as the %q OS user, which was not found "+
			"(installing the postgresql package creates it, or: useradd --system %s): %w", superuser, superuser, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("uid %q of OS user %q: %w", u.Uid, superuser, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("gid %q of OS user %q: %w", u.Gid, superuser, err)
	}
	return &osUser{name: u.Username, uid: uid, gid: gid}, nil
}

// grantServerUser hands the scratch directories to the server user and makes
// sure it can reach them. Directories from os.MkdirTemp are 0700 and owned by
// root, and so are their parents when the caller passes e.g. t.TempDir().
func (c *Cluster) grantServerUser(ctx context.Context) error {
	dirs := []string{c.root}
	if c.ownSock {
		dirs = append(dirs, c.sockDir)
	}
	for _, dir := range dirs {
		if err := chownTree(dir, c.runAs.uid, c.runAs.gid); err != nil {
			return fmt.Errorf("hand %s to OS user %q: %w", dir, c.runAs.name, err)
		}
		if err := allowTraverseUnderTemp(dir); err != nil {
			return err
		}
		// Anything outside the temp dir is not ours to chmod, so check
		// rather than guess, and say which directory is the problem.
		cmd := exec.CommandContext(ctx, c.runuser, "-u", c.runAs.name, "--", "test", "-w", dir, "-a", "-x", dir)
		cmd.Dir = "/"
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("OS user %q cannot write to %s; every parent directory must be searchable (o+x) by it, "+
				"or choose another Options.Dir: %w %s", c.runAs.name, dir, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

func chownTree(root string, uid, gid int) error {
	return filepath.WalkDir(root, func(path string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, gid)
	})
}

// allowTraverseUnderTemp adds o+x (search, not read) to the ancestors of dir
// that live inside the system temp directory, which is the case for nested
// test temp dirs. Directories elsewhere are left alone.
func allowTraverseUnderTemp(dir string) error {
	tmp, err := filepath.EvalSymlinks(os.TempDir())
	if err != nil {
		return nil // nothing we may safely change; the access check will report problems
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("resolve %s: %w", dir, err)
	}
	for d := filepath.Dir(real); strings.HasPrefix(d, tmp+string(filepath.Separator)); d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("stat %s: %w", d, err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			keep := fi.Mode() & (os.ModePerm | os.ModeSticky | os.ModeSetgid | os.ModeSetuid)
			if err := os.Chmod(d, keep|0o001); err != nil {
				return fmt.Errorf("make %s searchable for the server user: %w", d, err)
			}
		}
	}
	return nil
}

// WriteDataFile writes a file into the data directory, owned by the OS user
// the server runs as (a key file, say, which the server insists it owns),
// and returns its path.
func (c *Cluster) WriteDataFile(name string, data []byte, mode os.FileMode) (string, error) {
	path := filepath.Join(c.dataDir, name)
	if err := os.WriteFile(path, data, mode); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if os.Geteuid() == 0 {
		u, err := lookupServerUser()
		if err != nil {
			return "", err
		}
		if err := os.Chown(path, u.uid, u.gid); err != nil {
			return "", fmt.Errorf("chown %s: %w", path, err)
		}
	}
	return path, nil
}
