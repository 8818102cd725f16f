package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/status"
)

// statusTimeout bounds one status read, so a database that does not
// answer shows as an error in the next frame rather than a frozen screen.
const statusTimeout = 30 * time.Second

func gatherStatus(ctx context.Context, cfg *config.Config) (*status.Report, error) {
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	return status.Gather(ctx, cfg)
}

// watchStatus redraws the status every interval until ctx ends (Ctrl-C,
// SIGTERM) or count frames are shown (count 0: no limit). On a terminal
// each frame replaces the last; into a pipe or file frames follow each
// other, and with asJSON each is one line. A frame that cannot be read (a
// database down) shows the error and the watch goes on; the exit code is
// 1 only when the last frame failed.
func watchStatus(ctx context.Context, w io.Writer, cfg *config.Config, interval time.Duration, count int, asJSON bool) error {
	if interval < 100*time.Millisecond {
		return fmt.Errorf("--interval %s is too short: at least 100ms (every frame queries both databases)", interval)
	}
	redraw := isTerminal(w) && !asJSON
	var lastErr error
	for frame := 0; count == 0 || frame < count; frame++ {
		if frame > 0 {
			select {
			case <-ctx.Done():
				return lastErr
			case <-time.After(interval):
			}
		}
		r, err := gatherStatus(ctx, cfg)
		if ctx.Err() != nil {
			return lastErr // stopped mid-frame: keep the last frame on screen
		}
		lastErr = err
		var buf bytes.Buffer
		switch {
		case asJSON && err != nil:
			_ = json.NewEncoder(&buf).Encode(map[string]string{"time": time.Now().Format(time.RFC3339), "error": config.RedactDSN(err.Error())})
		case asJSON:
			_ = json.NewEncoder(&buf).Encode(struct {
				Time string `json:"time"`
				*status.Report
			}{time.Now().Format(time.RFC3339), r})
		default:
			if redraw {
				buf.WriteString("\033[H\033[2J") // cursor home, clear screen
			} else if frame > 0 {
				buf.WriteString("\n")
			}
			fmt.Fprintf(&buf, "%s  every %s (Ctrl-C to stop)\n", time.Now().Format("2006-01-02 15:04:05"), interval)
			if err != nil {
				fmt.Fprintf(&buf, "cannot read the status: %s\n", config.RedactDSN(err.Error()))
			} else {
				r.Text(&buf)
			}
		}
		if _, werr := w.Write(buf.Bytes()); werr != nil {
			return werr // the reader went away (a closed pipe)
		}
	}
	return lastErr
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
