package pgcluster

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ownProcessGroup runs a server command in a process group of its own. A
// Ctrl-C in a terminal signals the whole foreground process group, so
// without it a second Ctrl-C while a caller cleans up (the demo, an
// interrupted go test) would interrupt pg_ctl stop halfway and leave the
// server running. Cancelling the command's context kills the whole group,
// so the server binary goes too when runuser runs it.
func ownProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return err
		}
		return nil
	}
}

// postmasterPID reads the postmaster's pid from the first line of
// postmaster.pid, which is where pg_ctl itself looks.
func (c *Cluster) postmasterPID() (int, error) {
	f, err := os.Open(filepath.Join(c.dataDir, "postmaster.pid"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, ErrNotRunning
	}
	if err != nil {
		return 0, fmt.Errorf("read postmaster.pid: %w", err)
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("read postmaster.pid: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		// The server writes the file in steps; a half-written one means it
		// is starting or stopping, which for our callers is "not running".
		return 0, fmt.Errorf("postmaster.pid has no valid pid (%q): %w", line, ErrNotRunning)
	}
	return pid, nil
}

// killProcessTree SIGKILLs pid and its direct children and waits for all of
// them to be gone. PostgreSQL's processes are all direct children of the
// postmaster, so one level is the whole server.
func killProcessTree(pid int, timeout time.Duration) error {
	// Freeze the postmaster first so it cannot fork replacements (autovacuum
	// workers, walsenders) between listing its children and killing it.
	_ = syscall.Kill(pid, syscall.SIGSTOP)
	children := childPIDs(pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		_ = syscall.Kill(pid, syscall.SIGCONT)
		return fmt.Errorf("SIGKILL postmaster %d: %w", pid, err)
	}
	for _, child := range children {
		_ = syscall.Kill(child, syscall.SIGKILL)
	}

	// Without the wait a following StartAgain would race the dying children,
	// which still hold the shared memory segment the new postmaster checks.
	all := append([]int{pid}, children...)
	deadline := time.Now().Add(timeout)
	for {
		var left []int
		for _, p := range all {
			if ProcessAlive(p) {
				left = append(left, p)
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still alive %s after SIGKILL", left, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitReaped waits up to timeout for pid to disappear completely, zombie
// included, and reports whether it did.
func waitReaped(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for processExists(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// processExists reports whether pid names any process, zombies included.
func processExists(pid int) bool {
	err := syscall.Kill(pid, 0)
	// EPERM means it exists but belongs to someone else.
	return err == nil || errors.Is(err, syscall.EPERM)
}

// WaitExited waits up to timeout for pid to stop running (a zombie counts
// as stopped) and reports whether it did.
func WaitExited(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for ProcessAlive(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// ProcessAlive reports whether pid exists and is not a zombie. A zombie has
// released its memory and sockets, so for our purposes it is dead.
func ProcessAlive(pid int) bool {
	if !processExists(pid) {
		return false
	}
	state, ok := procState(pid)
	return !ok || state != 'Z'
}

// procState returns the state letter from /proc/<pid>/stat; ok is false where
// /proc is unavailable (macOS).
func procState(pid int) (byte, bool) {
	_, state, ok := readProcStat(pid)
	return state, ok
}

// childPIDs lists the direct children of ppid using /proc. Elsewhere it
// returns nil: the children then notice the postmaster's death on their own,
// and StartAgain retries until they have.
func childPIDs(ppid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if parent, _, ok := readProcStat(pid); ok && parent == ppid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// readProcStat parses the parent pid and state of /proc/<pid>/stat. The
// command name may contain spaces and parentheses, so fields are counted
// from the last ')'.
func readProcStat(pid int) (ppid int, state byte, ok bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 2 || len(fields[0]) != 1 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(fields[1])
	if err != nil {
		return 0, 0, false
	}
	return ppid, fields[0][0], true
}

// tailFile returns at most maxBytes from the end of path, reading no earlier
// than offset, starting at a line boundary when it had to cut.
func tailFile(path string, offset int64, maxBytes int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(cannot stat %s: %v)", path, err)
	}
	if offset > fi.Size() {
		return ""
	}
	start := offset
	cut := false
	if fi.Size()-start > int64(maxBytes) {
		start = fi.Size() - int64(maxBytes)
		cut = true
	}
	if start < 0 {
		start = 0
	}
	b, err := io.ReadAll(io.NewSectionReader(f, start, fi.Size()-start))
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	if cut {
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return strings.TrimRight(string(b), "\n")
}
