// Package version says which build of tandem is running: for `tandem
// version`, the tandem_build_info metric and bug reports.
//
// Release builds set the variables below at link time:
//
//	go build -ldflags "-X github.com/tandem-migrate/tandem/internal/version.version=v1.2.0
//	  -X github.com/tandem-migrate/tandem/internal/version.commit=$(git rev-parse HEAD)
//	  -X github.com/tandem-migrate/tandem/internal/version.date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" ./cmd/tandem
//
// (the Makefile and the Dockerfile do). Without them, what the Go toolchain
// stamped into the binary fills in: the module version for `go install
// ...@v1.2.0`, and the VCS revision and commit time for a build in a git
// checkout.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set with -ldflags -X; they must stay plain string variables for that.
var (
	version string
	commit  string
	date    string
)

// Info describes one build.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	Date      string `json:"date"`
	GoVersion string `json:"go_version"`
}

// Get returns this binary's build information.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return resolve(version, commit, date, runtime.Version(), bi)
}

// resolve prefers what the link flags set, then what the toolchain
// stamped, then says plainly that it does not know.
func resolve(version, commit, date, goVersion string, bi *debug.BuildInfo) Info {
	i := Info{Version: version, Commit: commit, Date: date, GoVersion: goVersion}
	if bi != nil {
		// "(devel)" is what a build from a checkout says: no better than nothing.
		if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			i.Version = bi.Main.Version
		}
		var revision, modified, vcsTime string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.modified":
				modified = s.Value
			case "vcs.time":
				vcsTime = s.Value
			}
		}
		if i.Commit == "" && revision != "" {
			i.Commit = revision
			if modified == "true" {
				i.Commit += "-dirty"
			}
		}
		if i.Date == "" {
			i.Date = vcsTime
		}
	}
	if i.Version == "" {
		i.Version = "devel"
	}
	if i.Commit == "" {
		i.Commit = "unknown"
	}
	if i.Date == "" {
		i.Date = "unknown"
	}
	return i
}

// String is the one line `tandem --version` prints.
func (i Info) String() string {
	return fmt.Sprintf("%s (commit %s, built %s, %s)", i.Version, i.Commit, i.Date, i.GoVersion)
}
