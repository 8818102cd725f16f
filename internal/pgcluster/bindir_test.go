package pgcluster

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeBinDir creates dir with executable stand-ins for the given binaries.
func fakeBinDir(t *testing.T, dir string, bins ...string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range bins {
		if err := os.WriteFile(filepath.Join(dir, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestBinSearch(t *testing.T) {
	t.Parallel()
	all := serverBinaries

	type fixture struct {
		search binSearch
		want   string // empty means ErrBinariesNotFound is expected
	}
	notFound := func(string) (string, error) { return "", errors.New("not on PATH") }
	noPgConfig := func() (string, error) { return "", errors.New("no pg_config") }

	tests := []struct {
		name  string
		setup func(t *testing.T, tmp string) fixture
	}{
		{
			name: "env var wins over everything",
			setup: func(t *testing.T, tmp string) fixture {
				env := fakeBinDir(t, filepath.Join(tmp, "env"), all...)
				path := fakeBinDir(t, filepath.Join(tmp, "path"), all...)
				return fixture{
					search: binSearch{
						envDir:   env,
						lookPath: func(string) (string, error) { return filepath.Join(path, "initdb"), nil },
					},
					want: env,
				}
			},
		},
		{
			name: "env var without postgres is an error, not a fallback",
			setup: func(t *testing.T, tmp string) fixture {
				env := fakeBinDir(t, filepath.Join(tmp, "env"), "initdb", "pg_ctl")
				path := fakeBinDir(t, filepath.Join(tmp, "path"), all...)
				return fixture{search: binSearch{
					envDir:   env,
					lookPath: func(string) (string, error) { return filepath.Join(path, "initdb"), nil },
				}}
			},
		},
		{
			name: "initdb on PATH",
			setup: func(t *testing.T, tmp string) fixture {
				path := fakeBinDir(t, filepath.Join(tmp, "path"), all...)
				return fixture{
					search: binSearch{
						lookPath: func(string) (string, error) { return filepath.Join(path, "initdb"), nil },
						pgConfig: noPgConfig,
					},
					want: path,
				}
			},
		},
		{
			name: "symlinked initdb on PATH resolves to the real directory",
			setup: func(t *testing.T, tmp string) fixture {
				real := fakeBinDir(t, filepath.Join(tmp, "lib", "15", "bin"), all...)
				link := fakeBinDir(t, filepath.Join(tmp, "localbin"))
				if err := os.Symlink(filepath.Join(real, "initdb"), filepath.Join(link, "initdb")); err != nil {
					t.Fatal(err)
				}
				return fixture{
					search: binSearch{
						lookPath: func(string) (string, error) { return filepath.Join(link, "initdb"), nil },
					},
					want: real,
				}
			},
		},
		{
			name: "pg_config bindir",
			setup: func(t *testing.T, tmp string) fixture {
				dir := fakeBinDir(t, filepath.Join(tmp, "cfg"), all...)
				return fixture{
					search: binSearch{
						lookPath: notFound,
						pgConfig: func() (string, error) { return dir, nil },
					},
					want: dir,
				}
			},
		},
		{
			name: "pg_config bindir without server binaries falls through to versioned dirs",
			setup: func(t *testing.T, tmp string) fixture {
				cfg := fakeBinDir(t, filepath.Join(tmp, "cfg"), "pg_config", "psql")
				root := filepath.Join(tmp, "usr-lib-postgresql")
				want := fakeBinDir(t, filepath.Join(root, "14", "bin"), all...)
				return fixture{
					search: binSearch{
						lookPath:      notFound,
						pgConfig:      func() (string, error) { return cfg, nil },
						versionedRoot: root,
					},
					want: want,
				}
			},
		},
		{
			name: "highest complete version is chosen numerically",
			setup: func(t *testing.T, tmp string) fixture {
				root := filepath.Join(tmp, "usr-lib-postgresql")
				fakeBinDir(t, filepath.Join(root, "9.6", "bin"), all...)
				fakeBinDir(t, filepath.Join(root, "10", "bin"), all...)
				want := fakeBinDir(t, filepath.Join(root, "15", "bin"), all...)
				fakeBinDir(t, filepath.Join(root, "16", "bin"), "pg_ctl") // client-only leftovers
				fakeBinDir(t, filepath.Join(root, "common", "bin"), all...)
				return fixture{
					search: binSearch{lookPath: notFound, pgConfig: noPgConfig, versionedRoot: root},
					want:   want,
				}
			},
		},
		{
			name: "nothing anywhere",
			setup: func(t *testing.T, tmp string) fixture {
				return fixture{search: binSearch{
					lookPath:      notFound,
					pgConfig:      noPgConfig,
					versionedRoot: filepath.Join(tmp, "does-not-exist"),
				}}
			},
		},
		{
			name: "non-executable binaries do not count",
			setup: func(t *testing.T, tmp string) fixture {
				dir := fakeBinDir(t, filepath.Join(tmp, "path"), all...)
				if err := os.Chmod(filepath.Join(dir, "postgres"), 0o644); err != nil {
					t.Fatal(err)
				}
				return fixture{search: binSearch{
					lookPath: func(string) (string, error) { return filepath.Join(dir, "initdb"), nil },
				}}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := tt.setup(t, t.TempDir())
			got, err := f.search.find()
			if f.want == "" {
				if !errors.Is(err, ErrBinariesNotFound) {
					t.Fatalf("find() = %q, %v; want ErrBinariesNotFound", got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("find() error: %v", err)
			}
			if got != f.want {
				t.Fatalf("find() = %q, want %q", got, f.want)
			}
		})
	}
}

func TestErrBinariesNotFoundExplainsInstall(t *testing.T) {
	t.Parallel()
	msg := ErrBinariesNotFound.Error()
	for _, want := range []string{"apt-get install postgresql", "brew install postgresql@15", EnvBinDir} {
		if !strings.Contains(msg, want) {
			t.Errorf("error text %q lacks %q", msg, want)
		}
	}
}

func TestStartWithBadBinDirEnv(t *testing.T) {
	// t.Setenv forbids t.Parallel, which is what we want: the variable is
	// process-wide.
	t.Setenv(EnvBinDir, t.TempDir())
	_, err := Start(t.Context(), Options{})
	if !errors.Is(err, ErrBinariesNotFound) {
		t.Fatalf("Start with empty %s: got %v, want ErrBinariesNotFound", EnvBinDir, err)
	}
}

func TestCompareVersions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		a, b string
		want int // sign only
	}{
		{"15", "15", 0},
		{"16", "9.6", 1},
		{"9.6", "10", -1},
		{"9", "9.6", -1},
		{"17.1", "17", 1},
	}
	for _, tt := range tests {
		a, okA := parseVersion(tt.a)
		b, okB := parseVersion(tt.b)
		if !okA || !okB {
			t.Fatalf("parseVersion(%q/%q) failed", tt.a, tt.b)
		}
		got := compareVersions(a, b)
		if sign(got) != tt.want {
			t.Errorf("compareVersions(%s, %s) = %d, want sign %d", tt.a, tt.b, got, tt.want)
		}
	}
	for _, bad := range []string{"", "common", "15beta", "1..2", "-1"} {
		if _, ok := parseVersion(bad); ok {
			t.Errorf("parseVersion(%q) accepted", bad)
		}
	}
}

func sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 0:
		return 1
	}
	return 0
}
