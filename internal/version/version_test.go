package version

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestResolve(t *testing.T) {
	stamped := &debug.BuildInfo{
		Main: debug.Module{Path: "github.com/tandem-migrate/tandem", Version: "v1.4.0"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.time", Value: "2025-01-02T03:04:05Z"}, {Key: "vcs.modified", Value: "false"},
		},
	}
	checkout := &debug.BuildInfo{
		Main: debug.Module{Path: "github.com/tandem-migrate/tandem", Version: "(devel)"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "def456"}, {Key: "vcs.time", Value: "2025-02-03T04:05:06Z"}, {Key: "vcs.modified", Value: "true"},
		},
	}
	tests := []struct {
		name                  string
		version, commit, date string
		bi                    *debug.BuildInfo
		want                  Info
	}{
		{"nothing known", "", "", "", nil, Info{"devel", "unknown", "unknown", "go1.x"}},
		{"ldflags win", "v2.0.0", "fff", "2026-01-01T00:00:00Z", stamped, Info{"v2.0.0", "fff", "2026-01-01T00:00:00Z", "go1.x"}},
		{"go install @version", "", "", "", stamped, Info{"v1.4.0", "abc123", "2025-01-02T03:04:05Z", "go1.x"}},
		{"build in a dirty checkout", "", "", "", checkout, Info{"devel", "def456-dirty", "2025-02-03T04:05:06Z", "go1.x"}},
		{"version from ldflags, the rest stamped", "v1.5.0-rc1", "", "", checkout, Info{"v1.5.0-rc1", "def456-dirty", "2025-02-03T04:05:06Z", "go1.x"}},
		{"no VCS stamp", "", "", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, Info{"devel", "unknown", "unknown", "go1.x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := resolve(tt.version, tt.commit, tt.date, "go1.x", tt.bi); got != tt.want {
				t.Fatalf("resolve = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestGetNeverEmpty(t *testing.T) {
	i := Get()
	if i.Version == "" || i.Commit == "" || i.Date == "" || !strings.HasPrefix(i.GoVersion, "go") {
		t.Fatalf("Get() = %+v; every field needs a value", i)
	}
}
