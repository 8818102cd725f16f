package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// EnvBinDir names the environment variable that pins the directory holding
// initdb, pg_ctl and postgres. It wins over every other search step so a
// developer with several PostgreSQL versions installed can choose one.
const EnvBinDir = "TANDEM_PG_BINDIR"

// ErrBinariesNotFound is returned (wrapped) by FindBinDir and Start when no
// usable PostgreSQL server installation exists. Its text tells the reader how
// to fix that, because it usually surfaces as the only line of a failed test.
var ErrBinariesNotFound = errors.New("PostgreSQL server binaries not found: " +
	"install them (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql@15) " +
	"or set " + EnvBinDir + " to the directory containing initdb")

// serverBinaries must all live in the same directory: initdb locates postgres
// relative to itself, and a mixed-version pg_ctl refuses to drive the server.
var serverBinaries = []string{"initdb", "pg_ctl", "postgres"}

// debianVersionedRoot is where Debian/Ubuntu packages install the server; it
// is not on PATH there, which is why it is searched explicitly.
const debianVersionedRoot = "/usr/lib/postgresql"

// FindBinDir returns the directory holding the PostgreSQL server binaries
// (initdb, pg_ctl, postgres). The search order is: $TANDEM_PG_BINDIR, the
// directory of initdb on $PATH, `pg_config --bindir`, then the highest
// version under /usr/lib/postgresql/*/bin.
func FindBinDir() (string, error) {
	return binSearch{
		envDir:        os.Getenv(EnvBinDir),
		lookPath:      exec.LookPath,
		pgConfig:      pgConfigBinDir,
		versionedRoot: debianVersionedRoot,
	}.find()
}

// binSearch holds the inputs of the search so tests can exercise every branch
// without depending on what is installed on the machine.
type binSearch struct {
	envDir        string
	lookPath      func(file string) (string, error)
	pgConfig      func() (string, error)
	versionedRoot string
}

func (s binSearch) find() (string, error) {
	if s.envDir != "" {
		// An explicit choice that does not work is an error rather than a
		// reason to fall back: silently using another version would make
		// test results depend on the machine.
		if missing := missingBinaries(s.envDir); len(missing) > 0 {
			return "", fmt.Errorf("%s=%q does not contain %s: %w",
				EnvBinDir, s.envDir, strings.Join(missing, ", "), ErrBinariesNotFound)
		}
		return s.envDir, nil
	}

	if s.lookPath != nil {
		if p, err := s.lookPath("initdb"); err == nil {
			// /usr/local/bin often holds symlinks to only some binaries, so
			// also consider the directory the symlink points into.
			candidates := []string{filepath.Dir(p)}
			if real, err := filepath.EvalSymlinks(p); err == nil {
				candidates = append(candidates, filepath.Dir(real))
			}
			for _, dir := range candidates {
				if len(missingBinaries(dir)) == 0 {
					return dir, nil
				}
			}
		}
	}

	if s.pgConfig != nil {
		// pg_config ships with the client/dev packages too, so its bindir is
		// only trusted when the server binaries are really there.
		if dir, err := s.pgConfig(); err == nil && dir != "" && len(missingBinaries(dir)) == 0 {
			return dir, nil
		}
	}

	if s.versionedRoot != "" {
		if dir, ok := highestVersionedBinDir(s.versionedRoot); ok {
			return dir, nil
		}
	}

	return "", ErrBinariesNotFound
}

func pgConfigBinDir() (string, error) {
	path, err := exec.LookPath("pg_config")
	if err != nil {
		return "", err
	}
	// pg_config is a trivial program; the timeout only guards against a
	// broken wrapper script hanging the test binary.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--bindir").Output()
	if err != nil {
		return "", fmt.Errorf("pg_config --bindir: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// highestVersionedBinDir picks root/<version>/bin for the numerically highest
// version that has a complete set of server binaries, so "16" beats "9.6".
func highestVersionedBinDir(root string) (string, bool) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return "", false
	}
	type candidate struct {
		version []int
		dir     string
	}
	var found []candidate
	for _, e := range entries {
		v, ok := parseVersion(e.Name())
		if !ok {
			continue
		}
		dir := filepath.Join(root, e.Name(), "bin")
		if len(missingBinaries(dir)) == 0 {
			found = append(found, candidate{v, dir})
		}
	}
	if len(found) == 0 {
		return "", false
	}
	sort.Slice(found, func(i, j int) bool { return compareVersions(found[i].version, found[j].version) > 0 })
	return found[0].dir, true
}

// parseVersion accepts directory names such as "15" or "9.6".
func parseVersion(s string) ([]int, bool) {
	parts := strings.Split(s, ".")
	v := make([]int, 0, len(parts))
	for _, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return nil, false
		}
		v = append(v, n)
	}
	return v, true
}

func compareVersions(a, b []int) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	return len(a) - len(b)
}

// missingBinaries lists which server binaries are absent or not executable.
func missingBinaries(dir string) []string {
	var missing []string
	for _, name := range serverBinaries {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			missing = append(missing, name)
		}
	}
	return missing
}
