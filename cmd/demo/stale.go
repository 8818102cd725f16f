package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
)

// A demo that was killed (kill -9, a closed terminal) leaves its two
// clusters and tandem running with nobody to stop them. Each demo marks
// its scratch directory with its own pid and tandem's, so the next demo
// can tell such leftovers from a demo that is still running, and remove
// them before it starts.

const (
	scratchPrefix = "tandem-demo-"
	demoPIDFile   = "demo.pid"
	tandemPIDFile = "tandem.pid"
	// startGrace spares a directory a demo created a moment ago and has
	// not marked yet.
	startGrace = 30 * time.Second
)

// newScratch creates the demo's scratch directory under parent (the temp
// dir when empty) and marks it as this process's.
func newScratch(parent string) (string, error) {
	dir, err := os.MkdirTemp(parent, scratchPrefix)
	if err != nil {
		return "", fmt.Errorf("scratch directory: %w", err)
	}
	if err := writePID(dir, demoPIDFile, os.Getpid()); err != nil {
		return "", err
	}
	return dir, nil
}

func writePID(dir, name string, pid int) error {
	if err := os.WriteFile(filepath.Join(dir, name), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return fmt.Errorf("mark %s: %w", dir, err)
	}
	return nil
}

func readPID(dir, name string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	return pid, err == nil && pid > 0
}

// removeStale stops and removes what killed demos left under parent (the
// temp dir when empty): their tandem, their PostgreSQL servers, their
// scratch directories. It returns one line per directory removed and the
// errors met; a demo that is still running is left alone.
func removeStale(parent string) (removed []string, errs []error) {
	if parent == "" {
		parent = os.TempDir()
	}
	dirs, _ := filepath.Glob(filepath.Join(parent, scratchPrefix+"*"))
	for _, dir := range dirs {
		fi, err := os.Lstat(dir)
		if err != nil || !fi.IsDir() {
			continue
		}
		if pid, ok := readPID(dir, demoPIDFile); ok {
			if pgcluster.ProcessAlive(pid) && cmdlineHas(pid, "demo") {
				continue // a demo still running
			}
		} else if time.Since(fi.ModTime()) < startGrace {
			continue // being created right now
		}
		what, err := stopLeftovers(dir)
		if err != nil {
			errs = append(errs, fmt.Errorf("stale demo %s: %w", dir, err))
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove stale demo %s: %w", dir, err))
			continue
		}
		line := "removed " + dir + ", left by a demo that was killed"
		if len(what) > 0 {
			line += ": stopped " + strings.Join(what, " and ")
		}
		removed = append(removed, line)
	}
	return removed, errs
}

// stopLeftovers stops the tandem and the servers of one stale demo
// directory, checking each pid's command line so that a pid the system
// has since given to another process is never signalled.
func stopLeftovers(dir string) ([]string, error) {
	var what []string
	if pid, ok := readPID(dir, tandemPIDFile); ok && pgcluster.ProcessAlive(pid) && cmdlineHas(pid, "tandem", "run") {
		// Safe at any moment: a restart resumes from the checkpoint, and
		// these databases go away next anyway.
		_ = syscall.Kill(pid, syscall.SIGKILL)
		if !pgcluster.WaitExited(pid, 10*time.Second) {
			return what, fmt.Errorf("tandem (pid %d) still running after SIGKILL", pid)
		}
		what = append(what, fmt.Sprintf("tandem (pid %d)", pid))
	}
	pidFiles, _ := filepath.Glob(filepath.Join(dir, "tandem-pg-*", "data", "postmaster.pid"))
	for _, f := range pidFiles {
		data := filepath.Dir(f)
		pid, ok := readPID(data, "postmaster.pid")
		if !ok || !pgcluster.ProcessAlive(pid) || !cmdlineHas(pid, data) {
			continue
		}
		// SIGQUIT is PostgreSQL's immediate shutdown: the postmaster
		// stops its children and exits. Nothing in it is worth a
		// checkpoint.
		_ = syscall.Kill(pid, syscall.SIGQUIT)
		if !pgcluster.WaitExited(pid, 15*time.Second) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			if !pgcluster.WaitExited(pid, 5*time.Second) {
				return what, fmt.Errorf("PostgreSQL (pid %d, %s) still running after SIGKILL", pid, data)
			}
		}
		what = append(what, fmt.Sprintf("PostgreSQL (pid %d)", pid))
	}
	return what, nil
}

// cmdlineHas reports whether pid's command line contains every one of
// words.
func cmdlineHas(pid int, words ...string) bool {
	var line string
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
		line = string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
	} else if out, err := exec.Command("ps", "-o", "command=", "-p", strconv.Itoa(pid)).Output(); err == nil {
		line = string(out) // no /proc (macOS)
	}
	for _, w := range words {
		if !strings.Contains(line, w) {
			return false
		}
	}
	return line != ""
}
