package main

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// The switch: once the history is copied and the stream has run a while,
// the demo does what an operator would to move the applications to the new
// database and back: `tandem verify` (the cutover's gates want a recorded
// clean pass), `tandem cutover`, point the writer at the new database, let
// it write there (tandem streams new -> old), `tandem rollback`, point the
// writer back at the old database.

// switchPlan says when the cutover and the rollback start.
type switchPlan struct {
	cutAt, backAt time.Time
	// onNew is how long the writer writes to the new database at least,
	// when the rollback's time is counted from the cutover's end.
	onNew time.Duration
	// relative: backAt is set once the cutover is done (no
	// TANDEM_DEMO_SECONDS: the demo runs until Ctrl-C).
	relative bool
}

const (
	// minSwitchWindow is the least time left after the backfill in which
	// the cutover, a few seconds on the new database, the rollback and a
	// few more on the old one fit; less, and the demo skips them.
	minSwitchWindow = 15 * time.Second
	// minOnNew keeps the writer on the new database a few seconds even
	// when the cutover took longer than planned, and minOnOld on the old
	// one after the rollback before TANDEM_DEMO_SECONDS, overrun, stops
	// the demo.
	minOnNew = 4 * time.Second
	minOnOld = 3 * time.Second
	// backfillTakes is how long the copy takes at configs/demo.yaml's
	// rate cap on an idle machine.
	backfillTakes = 10 * time.Second
	// ceremonyTimeout bounds a ceremony (cutover.timeout in
	// configs/demo.yaml bounds each of its waits).
	ceremonyTimeout = 3 * time.Minute
)

// planSwitch decides, when the backfill completes, when to cut over and
// roll back: at about 40% and 70% of the time TANDEM_DEMO_SECONDS leaves,
// or after 10 and 15 seconds when the demo runs until Ctrl-C. ok is false
// when there is no time for them; the reason is printed.
func (d *demo) planSwitch(now time.Time) (p switchPlan, ok bool) {
	if d.deadline.IsZero() {
		p = switchPlan{cutAt: now.Add(10 * time.Second), onNew: 15 * time.Second, relative: true}
		fmt.Printf("%5s  next: the cutover in 10s, the rollback 15s after it; then the writer stays on the old database until Ctrl-C\n", d.elapsed())
		return p, true
	}
	left := d.deadline.Sub(now)
	if left < minSwitchWindow {
		fmt.Printf("%5s  %s of TANDEM_DEMO_SECONDS left after the backfill: too short for the cutover and the rollback (they need %s); skipping them\n",
			d.elapsed(), left.Round(time.Second), minSwitchWindow)
		return p, false
	}
	p = switchPlan{cutAt: now.Add(left * 4 / 10), backAt: now.Add(left * 7 / 10), onNew: minOnNew}
	fmt.Printf("%5s  next: the cutover in %s, the rollback in %s, the stop in %s\n", d.elapsed(),
		p.cutAt.Sub(now).Round(time.Second), p.backAt.Sub(now).Round(time.Second), left.Round(time.Second))
	return p, true
}

// ceremonyResult is what a cutover or rollback printed and measured.
type ceremonyResult struct {
	verb string
	// unavailable is the ceremony's own figure: fence to ready.
	unavailable string
	took        time.Duration
}

var unavailableRE = regexp.MustCompile(`Writes were unavailable for (\S+) \(fence to ready\)`)

// readyRE is the line on which the operator points the applications at
// the other database; what the ceremony prints after it is housekeeping.
var readyRE = regexp.MustCompile(`^(new|old) database ready: point the applications at`)

// cutover runs what an operator runs to move the writes to the new
// database, then points the writer at it.
func (d *demo) cutover(ctx context.Context, sum *summary) error {
	fmt.Printf("%5s  cutover: tandem verify first; the cutover's gates need its clean pass\n", d.elapsed())
	out, err := d.tandemCmd(ctx, "verify")
	if ctx.Err() != nil {
		return nil // stopped meanwhile: verify changes nothing, so nothing to undo
	}
	fmt.Print(indent("tandem verify: ", out))
	if err != nil {
		return fmt.Errorf("tandem verify before the cutover: %w", err)
	}
	// Pointed at the new database on the ready line, as an operator
	// would: unless the demo is stopping, then it writes nowhere.
	res, err := d.ceremony(ctx, "cutover", func() {
		if ctx.Err() == nil {
			sum.w.point(newSide)
		}
	})
	if err != nil {
		// Failed inside the fence, the old database stays read-only until
		// the cutover is finished or aborted; abort lifts the fence (and
		// says so when there is none).
		out, aerr := d.ceremonyQuiet("cutover", "--abort")
		fmt.Print(indent("tandem cutover --abort: ", out))
		if aerr != nil {
			return fmt.Errorf("tandem cutover: %w; tandem cutover --abort: %v", err, aerr)
		}
		return fmt.Errorf("tandem cutover: %w", err)
	}
	sum.ceremonies = append(sum.ceremonies, res)
	sum.cutOver = true
	if sum.w.side() == newSide {
		fmt.Printf("%5s  the writer writes to the new database since the ready line, in its schema: orders_v2, status labels, customer_ref, '{}' for no preferences\n", d.elapsed())
	}
	return nil
}

// rollback hands the writes back to the old database and points the
// writer there again.
func (d *demo) rollback(ctx context.Context, sum *summary) error {
	// Back on the ready line; on the old database the writer is where a
	// stop leaves it, so this holds even when the demo is stopping.
	res, err := d.ceremony(ctx, "rollback", func() { sum.w.point(oldSide) })
	if err != nil {
		// Teardown, in the stop that follows, lifts the fences tandem set.
		return fmt.Errorf("tandem rollback: %w", err)
	}
	sum.ceremonies = append(sum.ceremonies, res)
	sum.cutOver, sum.rolledBack = false, true
	fmt.Printf("%5s  the writer writes to the old database again since the ready line; tandem streams old -> new as before\n", d.elapsed())
	return nil
}

// ceremony runs `tandem cutover` or `tandem rollback`, prints its steps as
// they come, and calls ready on the line that says the other database is
// ready. A Ctrl-C meanwhile does not cut it short: stopped halfway, a
// ceremony leaves a database fenced. It finishes (or fails and is
// aborted), and the stop follows.
func (d *demo) ceremony(ctx context.Context, verb string, ready func()) (ceremonyResult, error) {
	res := ceremonyResult{verb: verb}
	start := time.Now()
	cmd := d.ceremonyCmd(verb)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	fmt.Printf("%5s  tandem %s --config %s\n", d.elapsed(), verb, configPath)
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("start tandem %s: %w", verb, err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	pad := "       "
	interrupted := ctx.Done()
	timeout := time.NewTimer(ceremonyTimeout)
	defer timeout.Stop()
	for open := true; open; {
		select {
		case l, ok := <-lines:
			if !ok {
				open = false
				break
			}
			fmt.Println(pad + l)
			if m := unavailableRE.FindStringSubmatch(l); m != nil {
				res.unavailable = m[1]
			}
			if readyRE.MatchString(l) {
				ready()
			}
		case <-interrupted:
			interrupted = nil
			fmt.Printf("%s(letting tandem %s finish: stopped halfway it would leave a database fenced)\n", pad, verb)
		case <-timeout.C:
			// Safe to kill: the ceremony resumes or aborts from what it
			// recorded, and teardown lifts its fences.
			_ = cmd.Process.Kill()
		}
	}
	err = cmd.Wait()
	res.took = time.Since(start)
	if err != nil {
		if s := strings.TrimSpace(stderr.String()); s != "" {
			fmt.Print(indent(pad, s))
		}
		return res, err
	}
	return res, nil
}

// ceremonyQuiet runs a ceremony command to completion, unaffected by
// Ctrl-C, and returns what it printed.
func (d *demo) ceremonyQuiet(verb string, args ...string) (string, error) {
	cmd := d.ceremonyCmd(verb, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start tandem %s: %w", verb, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(ceremonyTimeout):
		_ = cmd.Process.Kill()
		<-done
		return out.String(), fmt.Errorf("tandem %s did not finish within %s", verb, ceremonyTimeout)
	}
}

func (d *demo) ceremonyCmd(verb string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(d.root, binPath), append([]string{verb, "--config", configPath}, args...)...)
	cmd.Dir = d.root
	cmd.Env = d.childEnv()
	// Its own process group: the terminal's Ctrl-C reaches only the demo,
	// which lets the ceremony finish.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}
