package cutover

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/checkpoint"
	"github.com/tandem-migrate/tandem/pkg/config"
)

// side is one database as a ceremony acts on it: cutover fences the old
// one and waits on the new one's checkpoint, rollback the other way round.
type side struct {
	name string // "old" or "new", as the steps print it
	conn *pgx.Conn
	// fenced is the lifecycle flag saying tandem fenced this database.
	fenced *bool
}

func (c *ceremony) oldSide() side { return side{"old", c.old, &c.st.FencedOld} }
func (c *ceremony) newSide() side { return side{"new", c.new, &c.st.FencedNew} }

// fenceStep fences s when cutover.fence says tandem does it.
func (c *ceremony) fenceStep(ctx context.Context, s side) error {
	if c.cfg.Cutover.Fence != config.FenceReadOnly {
		return nil
	}
	return c.step(ctx, "fence the "+s.name+" database", func() (string, error) {
		n, err := fence(ctx, s.conn, c.cfg.Cutover.Timeout)
		if on, ferr := fenced(ctx, s.conn); ferr == nil && on {
			*s.fenced = true
		}
		return fmt.Sprintf("read-only for new sessions; %d application session(s) ended", n), err
	})
}

// drainSteps writes the fence marker on s and waits until the stream that
// reads s has committed it to store, the other side's checkpoint: then
// every write s took before the fence is on the other side.
func (c *ceremony) drainSteps(ctx context.Context, s side, other string, store checkpoint.Store, checkpointName, hint string) error {
	err := c.step(ctx, "mark the fence in the WAL", func() (string, error) {
		lsn, err := marker(ctx, s.conn, c.cfg.Name, "fence")
		c.st.FenceLSN = lsn
		return "at " + lsn.String(), err
	})
	if err != nil {
		return err
	}
	return c.step(ctx, other+" database reaches the fence", func() (string, error) {
		took, err := waitCheckpoint(ctx, store, c.st.FenceLSN, c.cfg.Cutover.Timeout)
		if err != nil {
			return "", fmt.Errorf("%w: %s", err, hint)
		}
		return fmt.Sprintf("%s past %s after %s", checkpointName, c.st.FenceLSN, round(took)), nil
	})
}

// liftStep lifts the fence tandem set on s, if it set one.
func (c *ceremony) liftStep(ctx context.Context, s side, detail string) error {
	if !*s.fenced {
		return nil
	}
	return c.step(ctx, "lift the "+s.name+" database's fence", func() (string, error) {
		if err := unfence(ctx, s.conn); err != nil {
			return "", err
		}
		*s.fenced = false
		return detail, nil
	})
}
