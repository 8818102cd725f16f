package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
)

// TestClosedStdout plays `make demo 2>&1 | tee log` and Ctrl-C: the
// demo's output pipe is closed (tee is gone) and then the demo gets
// SIGINT. It must still stop in order, exit 0, and leave no tandem, no
// PostgreSQL and no scratch directory behind.
func TestClosedStdout(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the whole demo runs (about a minute); run without -short, or go test -run TestClosedStdout ./cmd/demo")
	}
	bin := filepath.Join(t.TempDir(), "demo")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Stdout, cmd.Stderr = w, w // 2>&1
	cmd.Env = append(os.Environ(), "TANDEM_DEMO_SECONDS=600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
		if removed, errs := removeStale(""); len(removed)+len(errs) > 0 {
			t.Logf("cleaned up after the demo: %v %v", removed, errs)
		}
	})

	// Read until the writer runs, noting what to look for afterwards.
	var scratch string
	var tandemPID int
	var seen []string
	started := regexp.MustCompile(`^tandem run started \(pid (\d+)\)`)
	lines := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default: // no longer read
			}
		}
		close(lines)
	}()
	deadline := time.After(3 * time.Minute)
	for !strings.HasPrefix(last(seen), "slot streaming") {
		select {
		case l, ok := <-lines:
			if !ok {
				<-exited
				t.Fatalf("the demo ended early (%v):\n%s", waitErr, strings.Join(seen, "\n"))
			}
			seen = append(seen, l)
			if s, ok := strings.CutPrefix(l, "scratch directory "); ok {
				scratch = s
			}
			if m := started.FindStringSubmatch(l); m != nil {
				tandemPID, _ = strconv.Atoi(m[1])
			}
		case <-deadline:
			t.Fatalf("the demo did not start streaming in 3 minutes:\n%s", strings.Join(seen, "\n"))
		}
	}
	if scratch == "" || tandemPID == 0 {
		t.Fatalf("no scratch directory or tandem pid in the output:\n%s", strings.Join(seen, "\n"))
	}
	time.Sleep(time.Second) // the writer and a status line or two
	// tee is gone: whatever the demo writes now hits a closed pipe.
	r.Close()
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("demo after Ctrl-C with its output closed: %v, want exit 0", waitErr)
		}
	case <-time.After(4 * time.Minute):
		t.Fatal("the demo still runs 4 minutes after Ctrl-C")
	}
	if pgcluster.ProcessAlive(tandemPID) {
		t.Errorf("tandem (pid %d) still runs after the demo exited", tandemPID)
	}
	if left := processesUnder(scratch); len(left) > 0 {
		t.Errorf("processes of %s still running:\n%s", scratch, strings.Join(left, "\n"))
	}
	if _, err := os.Stat(scratch); !os.IsNotExist(err) {
		t.Errorf("scratch directory %s left behind: %v", scratch, err)
	}
}

func last(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[len(s)-1]
}

// processesUnder lists the live processes whose command line names dir
// (a postmaster's -D data directory).
func processesUnder(dir string) []string {
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), dir) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if pgcluster.ProcessAlive(pid) {
			out = append(out, fmt.Sprintf("%d %s", pid, strings.ReplaceAll(string(b), "\x00", " ")))
		}
	}
	return out
}
