package bench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
)

// Where the time of a phase goes is read from /proc: the CPU time of every
// server process of each cluster (by role: walsender, backend, apply
// worker...) and of the benchmark process itself, which hosts the
// in-process tandem. On a 2-core machine this says at once which side is
// the bottleneck.

// clockTicks is USER_HZ, the unit of /proc/PID/stat times. It is 100 on
// every Linux ABI Go supports; sysconf would need cgo to ask.
const clockTicks = 100

type procTicks struct {
	ticks int64
	role  string
}

// cpuSample is one reading of CPU time consumed so far.
type cpuSample struct {
	self, children, machine time.Duration
	clusters                map[string]map[int]procTicks // cluster name -> pid -> ticks
	// reaped is each postmaster's cutime+cstime: the CPU time of backends
	// that have exited (pgbench's, a replicator's after it disconnects).
	reaped map[string]int64
}

// cpuUse is CPU time consumed between two samples.
type cpuUse struct {
	Self     time.Duration                       // this process: in-process tandem + the benchmark's polling
	Children time.Duration                       // reaped child processes: pgbench, a tandem binary
	Machine  time.Duration                       // all CPUs busy, whoever ran
	Clusters map[string]map[string]time.Duration // cluster -> role -> time
}

// exitedRole is the role under which backends that ended meanwhile count.
const exitedRole = "exited backends"

func sampleCPU(clusters ...*pgcluster.Cluster) cpuSample {
	s := cpuSample{clusters: map[string]map[int]procTicks{}, reaped: map[string]int64{}, machine: machineBusyTime()}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err == nil {
		s.children = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	for _, c := range clusters {
		s.clusters[c.Name()], s.reaped[c.Name()] = clusterTicks(postmasterPID(c))
	}
	return s
}

// clusterTicks reads a cluster's live processes and the time of its
// reaped backends. A backend reaped while its siblings are being read would
// count twice or not at all (pgbench's clients exit just as a window
// closes), so the read is repeated until the postmaster's reaped time did
// not move during it.
func clusterTicks(pm int) (map[int]procTicks, int64) {
	for range 50 {
		_, _, before, err := procTimes(pm)
		if err != nil {
			break
		}
		procs := map[int]procTicks{}
		all := readProcs()
		for pid, p := range all {
			if pid == pm || p.ppid == pm {
				procs[pid] = procTicks{ticks: p.ticks, role: serverRole(p.title)}
			}
		}
		if _, _, after, err := procTimes(pm); err == nil && after == before {
			return procs, before
		}
		time.Sleep(10 * time.Millisecond)
	}
	return map[int]procTicks{}, 0
}

// total is all the CPU time of a cluster's processes so far: live ones
// and the backends its postmaster has reaped.
func (s cpuSample) total(cluster string) time.Duration {
	t := s.reaped[cluster]
	for _, p := range s.clusters[cluster] {
		t += p.ticks
	}
	return time.Duration(t) * time.Second / clockTicks
}

// since is the CPU used from before to s. Live processes are attributed
// to their role; backends that started and ended in between count as
// exitedRole, through the postmaster that reaped them.
func (s cpuSample) since(before cpuSample) cpuUse {
	u := cpuUse{Self: s.self - before.self, Children: s.children - before.children, Machine: s.machine - before.machine,
		Clusters: map[string]map[string]time.Duration{}}
	for name, procs := range s.clusters {
		roles := map[string]time.Duration{}
		for pid, p := range procs {
			d := p.ticks - before.clusters[name][pid].ticks
			if d > 0 {
				roles[p.role] += time.Duration(d) * time.Second / clockTicks
			}
		}
		if d := s.reaped[name] - before.reaped[name]; d > 0 {
			roles[exitedRole] += time.Duration(d) * time.Second / clockTicks
		}
		u.Clusters[name] = roles
	}
	return u
}

// Other is the CPU time of everything outside the measurement: other
// users of this shared machine. A large value means a noisy figure.
func (u cpuUse) Other() time.Duration {
	o := u.Machine - u.Self - u.Children
	for name := range u.Clusters {
		o -= u.Total(name)
	}
	return max(0, o)
}

// machineBusyTime is the busy time of all CPUs so far, from /proc/stat.
func machineBusyTime() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	// user nice system idle iowait irq softirq steal: all but idle and
	// iowait are busy.
	var ticks int64
	for i, v := range f[1:9] {
		if i == 3 || i == 4 {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// Total is the CPU time of one cluster's processes.
func (u cpuUse) Total(cluster string) time.Duration {
	var t time.Duration
	for _, d := range u.Clusters[cluster] {
		t += d
	}
	return t
}

// Top is the role that used the most CPU in cluster, e.g. "walsender".
func (u cpuUse) Top(cluster string) (string, time.Duration) {
	var role string
	var most time.Duration
	for r, d := range u.Clusters[cluster] {
		if d > most || (d == most && r < role) {
			role, most = r, d
		}
	}
	return role, most
}

// Describe renders one cluster as "4.1s (backend 3.9s, walwriter 0.1s)".
func (u cpuUse) Describe(cluster string) string {
	roles := u.Clusters[cluster]
	names := slices.SortedFunc(maps.Keys(roles), func(a, b string) int { return cmp.Compare(roles[b], roles[a]) })
	var parts []string
	for _, r := range names {
		if roles[r] >= 50*time.Millisecond {
			parts = append(parts, fmt.Sprintf("%s %.1fs", r, roles[r].Seconds()))
		}
	}
	return fmt.Sprintf("%.1fs (%s)", u.Total(cluster).Seconds(), strings.Join(parts, ", "))
}

type procStat struct {
	ppid   int
	ticks  int64 // utime + stime
	reaped int64 // cutime + cstime: children it has waited for
	title  string
}

// readProcs reads ppid, utime+stime and the process title (PostgreSQL
// rewrites its argv to say what each process is) of every process.
func readProcs() map[int]procStat {
	out := map[int]procStat{}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, de := range entries {
		pid, err := strconv.Atoi(de.Name())
		if err != nil {
			continue
		}
		ppid, ticks, reaped, err := procTimes(pid)
		if err != nil {
			continue // gone meanwhile
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", de.Name(), "cmdline"))
		title := strings.TrimSpace(string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
		out[pid] = procStat{ppid: ppid, ticks: ticks, reaped: reaped, title: title}
	}
	return out
}

// procTimes parses /proc/PID/stat. The command name (field 2) may contain
// spaces and parentheses, so fields are counted from its closing one.
func procTimes(pid int) (ppid int, ticks, reaped int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); ppid is field 4, utime 14, stime 15,
	// cutime 16, cstime 17.
	if len(f) < 15 {
		return 0, 0, 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ppid, _ = strconv.Atoi(f[1])
	var t [4]int64
	for k := range t {
		t[k], _ = strconv.ParseInt(f[11+k], 10, 64)
	}
	return ppid, t[0] + t[1], t[2] + t[3], nil
}

// procCPU is a process's CPU time so far.
func procCPU(pid int) time.Duration {
	_, ticks, _, err := procTimes(pid)
	if err != nil {
		return 0
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// postmasterPID reads the first line of postmaster.pid; 0 when unknown.
func postmasterPID(c *pgcluster.Cluster) int {
	f, err := os.Open(filepath.Join(c.DataDir(), "postmaster.pid"))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(sc.Text()))
	return pid
}

// serverRole turns a process title such as
// "postgres: walsender postgres 127.0.0.1(40522) START_REPLICATION" into
// a role: walsender, backend, apply worker, checkpointer...
func serverRole(title string) string {
	t, ok := strings.CutPrefix(title, "postgres: ")
	switch {
	case !ok:
		return "postmaster"
	case strings.HasPrefix(t, "walsender"):
		return "walsender"
	case strings.Contains(t, "logical replication") && strings.Contains(t, "worker for subscription"):
		return "apply worker"
	case strings.Contains(t, "127.0.0.1("), strings.Contains(t, "[local]"):
		return "backend"
	}
	f := strings.Fields(t)
	if len(f) >= 2 && (f[1] == "worker" || f[1] == "writer" || f[1] == "launcher") {
		return f[0] + " " + f[1]
	}
	if len(f) > 0 {
		return f[0]
	}
	return "postgres"
}

// procMemory reads a process's current and peak resident set size (VmRSS,
// VmHWM) in bytes.
func procMemory(pid int) (rss, peak int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *int64
		switch k {
		case "VmRSS":
			dst = &rss
		case "VmHWM":
			dst = &peak
		default:
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/status %s: %w", pid, k, err)
		}
		*dst = kb << 10
	}
	if peak == 0 {
		return 0, 0, fmt.Errorf("/proc/%d/status has no VmHWM", pid)
	}
	return rss, peak, nil
}

// waitProfile counts what the replication processes of one side were
// doing, sampled from pg_stat_activity: "running" (active with no wait
// event: on a CPU, or waiting for one on a busy machine) or the wait event, e.g. ClientRead (the applying backend waits for its
// client, i.e. for tandem) or WalSenderWriteData (the walsender waits for
// the consumer to read). It tells latency-bound from CPU-bound where CPU
// times alone cannot.
type waitProfile map[string]int

// String renders the shares, largest first, e.g. "running 40%, ClientRead 55%".
func (w waitProfile) String() string {
	total := 0
	for _, n := range w {
		total += n
	}
	if total == 0 {
		return "no samples"
	}
	names := slices.SortedFunc(maps.Keys(w), func(a, b string) int { return cmp.Or(cmp.Compare(w[b], w[a]), cmp.Compare(a, b)) })
	var parts []string
	for _, k := range names {
		if pct := 100 * w[k] / total; pct >= 2 {
			parts = append(parts, fmt.Sprintf("%s %d%%", k, pct))
		}
	}
	return strings.Join(parts, ", ")
}

// waitQuery selects the processes that do the replicating: walsenders on
// the old side; on the new side the applying client backend (tandem's)
// or native's apply worker. The benchmark's own sessions are excluded.
const waitQuery = `SELECT COALESCE(wait_event, CASE WHEN state = 'active' THEN 'running' ELSE COALESCE(state, 'unknown') END)
FROM pg_stat_activity
WHERE pid <> pg_backend_pid() AND NOT pid = ANY($1::int[])
  AND backend_type IN ('walsender', 'logical replication worker', 'client backend')
  AND (backend_type <> 'client backend' OR $2)`

// sampleWaits polls one side every interval until the returned func is
// called, which returns the counts. clientBackends says whether client
// backends count (the new side, where tandem applies through one); exclude
// lists the benchmark's own backend PIDs.
func sampleWaits(ctx context.Context, c *pgcluster.Cluster, clientBackends bool, exclude []uint32) (func() waitProfile, error) {
	conn, err := c.Connect(ctx, streamDB)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	prof := waitProfile{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer conn.Close(context.Background())
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			rows, err := conn.Query(ctx, waitQuery, exclude, clientBackends)
			if err == nil {
				for rows.Next() {
					var ev string
					if rows.Scan(&ev) == nil {
						prof[ev]++
					}
				}
				rows.Close()
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return func() waitProfile {
		cancel()
		<-done
		return prof
	}, nil
}
