package main

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-migrate/tandem/internal/version"
)

// versionPkg is where -ldflags -X sets the build's version; the Makefile
// and the Dockerfile use it.
const versionPkg = "github.com/tandem-migrate/tandem/internal/version"

func TestVersionCommand(t *testing.T) {
	want := version.Get()
	tests := []struct {
		name  string
		args  []string
		check func(t *testing.T, out string)
	}{
		{"text", nil, func(t *testing.T, out string) {
			lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			wantLines := []string{"tandem " + want.Version, "commit:     " + want.Commit, "built:      " + want.Date, "go version: " + want.GoVersion}
			if strings.Join(lines, "\n") != strings.Join(wantLines, "\n") {
				t.Fatalf("output:\n%s\nwant:\n%s", out, strings.Join(wantLines, "\n"))
			}
		}},
		{"json", []string{"--json"}, func(t *testing.T, out string) {
			var got version.Info
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("%v in %q", err, out)
			}
			if got != want {
				t.Fatalf("got %+v, want %+v", got, want)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := versionCmd()
			var out bytes.Buffer
			c.SetOut(&out)
			c.SetArgs(tt.args)
			if err := c.Execute(); err != nil {
				t.Fatal(err)
			}
			tt.check(t, out.String())
		})
	}
}

// TestVersionFromLinkFlags builds the binary the way a release does and
// checks that `tandem version` reports what the link flags said.
func TestVersionFromLinkFlags(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "tandem")
	ldflags := "-X " + versionPkg + ".version=v9.8.7 -X " + versionPkg + ".commit=c0ffee -X " + versionPkg + ".date=2030-01-02T03:04:05Z"
	if out, err := exec.Command("go", "build", "-ldflags", ldflags, "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version", "--json").Output()
	if err != nil {
		t.Fatalf("tandem version: %v", err)
	}
	var got version.Info
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v in %q", err, out)
	}
	if got.Version != "v9.8.7" || got.Commit != "c0ffee" || got.Date != "2030-01-02T03:04:05Z" || !strings.HasPrefix(got.GoVersion, "go") {
		t.Fatalf("tandem version --json = %+v", got)
	}
	line, err := exec.Command(bin, "--version").Output()
	if err != nil || !strings.HasPrefix(string(line), "tandem v9.8.7 (commit c0ffee, built 2030-01-02T03:04:05Z, go") {
		t.Fatalf("tandem --version = %q (%v)", line, err)
	}
}
