package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// No Docker engine runs the tests, so the Dockerfile is never built here.
// This keeps what can drift from the code in step with it: the Go version,
// the link flags that name the build, and the user the manifests expect.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	mod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goDirective := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(string(mod))
	if goDirective == nil {
		t.Fatal("go.mod has no go directive")
	}
	tests := []struct {
		what string
		want string // a regular expression the Dockerfile must match
	}{
		{"the Go version of go.mod (" + goDirective[1] + ")", `(?m)^ARG GO_VERSION=` + regexp.QuoteMeta(goDirective[1]) + `$`},
		{"a golang build stage", `(?m)^FROM golang:\$\{GO_VERSION\} AS build$`},
		{"a static binary", `CGO_ENABLED=0 go build`},
		{"the version link flag", regexp.QuoteMeta("-X " + versionPkg + ".version=${VERSION}")},
		{"the commit link flag", regexp.QuoteMeta("-X " + versionPkg + ".commit=${COMMIT}")},
		{"the date link flag", regexp.QuoteMeta("-X " + versionPkg + ".date=${DATE}")},
		{"a distroless final stage", `(?m)^FROM gcr\.io/distroless/static`},
		{"the non-root user the Deployment runs as", `(?m)^USER 65532:65532$`},
		{"tandem as the entrypoint", `(?m)^ENTRYPOINT \["/usr/local/bin/tandem"\]$`},
	}
	for _, tt := range tests {
		if !regexp.MustCompile(tt.want).MatchString(df) {
			t.Errorf("Dockerfile: no %s (want a match for %s)", tt.what, tt.want)
		}
	}
}

func TestMakefileSetsTheVersion(t *testing.T) {
	b, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	mk := string(b)
	if !strings.Contains(mk, "VERSION_PKG := "+versionPkg+"\n") {
		t.Errorf("Makefile: VERSION_PKG is not %s", versionPkg)
	}
	for _, v := range []string{"version", "commit", "date"} {
		if !strings.Contains(mk, "-X $(VERSION_PKG)."+v+"=") {
			t.Errorf("Makefile: LDFLAGS do not set %s.%s", versionPkg, v)
		}
	}
	if !regexp.MustCompile(`(?m)^\t\$\(GO\) build -ldflags "\$\(LDFLAGS\)"`).MatchString(mk) {
		t.Error("Makefile: build does not pass $(LDFLAGS)")
	}
}
