package backfill

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Snapshot is an MVCC snapshot of the old database as pg_current_snapshot()
// prints it: transactions below Xmin are finished, those at or above Xmax
// had not finished when it was taken, and Xip (sorted) lists the ones in
// between that were still running. IDs are 64-bit (epoch and xid).
type Snapshot struct {
	Xmin, Xmax uint64
	Xip        []uint64
}

// ParseSnapshot reads pg_snapshot's text form, "xmin:xmax:xip,xip,...".
func ParseSnapshot(s string) (Snapshot, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return Snapshot{}, fmt.Errorf("snapshot %q: want xmin:xmax:xip", s)
	}
	var snap Snapshot
	var err error
	if snap.Xmin, err = strconv.ParseUint(parts[0], 10, 64); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot %q: xmin: %w", s, err)
	}
	if snap.Xmax, err = strconv.ParseUint(parts[1], 10, 64); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot %q: xmax: %w", s, err)
	}
	if parts[2] != "" {
		for _, x := range strings.Split(parts[2], ",") {
			v, err := strconv.ParseUint(x, 10, 64)
			if err != nil {
				return Snapshot{}, fmt.Errorf("snapshot %q: xip: %w", s, err)
			}
			snap.Xip = append(snap.Xip, v)
		}
		// PostgreSQL prints them sorted; Visible relies on it, so do not
		// trust it blindly.
		slices.Sort(snap.Xip)
	}
	if snap.Xmin > snap.Xmax {
		return Snapshot{}, fmt.Errorf("snapshot %q: xmin after xmax", s)
	}
	return snap, nil
}

// Visible reports whether the effects of xid, a top-level transaction the
// stream delivered (so one that committed), are visible in the snapshot.
func (s Snapshot) Visible(xid uint32) bool {
	full := widen(xid, s.Xmax)
	if full >= s.Xmax {
		return false
	}
	if full < s.Xmin {
		return true
	}
	_, running := slices.BinarySearch(s.Xip, full)
	return !running
}

// widen gives a 32-bit xid (as pgoutput sends it) its epoch, taken from
// ref, a 64-bit xid of the same server: the one within 2^31 of ref.
// Transactions that can still be invisible to a snapshot are never older
// than its xmin, and the server keeps every running xid within 2^31 of the
// next one (wraparound protection), so for those the result is exact. An
// xid 2^31 older would come out in the future, that is as not yet visible:
// a wait, never a stale row.
func widen(xid uint32, ref uint64) uint64 {
	d := int64(int32(xid - uint32(ref)))
	if d < 0 && uint64(-d) > ref {
		return uint64(xid) // before the first epoch's wrap: no epoch to take
	}
	return uint64(int64(ref) + d)
}
