package verify

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/transform"
)

// The round-trip proof of a reverse mapping: old rows go through the
// forward mapping on the new database and back through the reverse one on
// the old database, and every column the reverse writes is compared with
// the old row it came from. Each mapping's expressions are evaluated by the
// database that evaluates them in production, with the same casts; rows
// travel between the servers in COPY (binary when every type is built-in)
// and wait in temp tables whose rows vanish at each commit. The old
// database is read one key range at a time, each in its own short
// read-only snapshot, so a range's rows are compared with exactly the rows
// that were sent, however the old database changes meanwhile.

// RoundTripOptions tunes one round-trip proof.
type RoundTripOptions struct {
	// Sample is how many old rows to check, in key ranges spread over the
	// table; 0 checks every row.
	Sample int
	// RangeRows is the number of old rows per key range (default 5000).
	RangeRows int
	// MaxExamples is how many rows each lossy column names (default 10).
	MaxExamples int
	// RowsPerSecond caps the old rows read; 0 means no cap.
	RowsPerSecond float64
	Log           *slog.Logger
}

const defaultRangeRows = 5000

// RoundTripReport is the result for one table: Table (old) through Via
// (new) and back.
type RoundTripReport struct {
	Table   string `json:"table"`
	Via     string `json:"via"`
	Sampled bool   `json:"sampled"`
	Ranges  int64  `json:"ranges"`
	// Rows counts the old rows checked: read and passing the forward
	// filter. Skipped counts those read that the filter leaves out: they
	// never reach the new database, so there is nothing to bring back.
	Rows    int64 `json:"rows"`
	Skipped int64 `json:"skipped"`
	// Lossy counts the rows checked that do not come back whole; Dropped
	// those of them the reverse filter leaves out altogether.
	Lossy   int64 `json:"lossy"`
	Dropped int64 `json:"dropped,omitempty"`
	// Columns counts, per old column, the rows whose value does not come
	// back.
	Columns map[string]int64 `json:"columns,omitempty"`
	// Compared are the old columns the proof covers: those the reverse
	// mapping writes. NotCarried are the others, left to their default by
	// the reverse, so not proved. Unwritten are new columns the reverse
	// reads but the forward does not write: the proof takes them as NULL,
	// where production would have their default.
	Compared   []string `json:"compared"`
	NotCarried []string `json:"not_carried,omitempty"`
	Unwritten  []string `json:"unwritten,omitempty"`
	// Examples names up to MaxExamples rows per lossy column (and per
	// dropped row).
	Examples []RoundTripRow `json:"examples,omitempty"`
	Seconds  float64        `json:"seconds"`
}

// OK reports whether every row checked came back whole.
func (r *RoundTripReport) OK() bool { return r.Lossy == 0 }

// RoundTripRow is one value that does not come back: the old row's key,
// the old column ("" when the reverse filter drops the whole row), its old
// value and the value the round trip gives, as the old database prints
// them (nil is NULL).
type RoundTripRow struct {
	Key    []KeyValue `json:"key"`
	Column string     `json:"column,omitempty"`
	Old    *string    `json:"old"`
	Back   *string    `json:"back"`
}

// String is one greppable line, e.g. "id=7 status_code: 3 -> 2".
func (r RoundTripRow) String() string {
	key := Diff{Key: r.Key}.KeyString()
	if r.Column == "" {
		return key + ": dropped by the reverse filter"
	}
	return fmt.Sprintf("%s %s: %s -> %s", key, displayName(r.Column), displayValue(r.Old), displayValue(r.Back))
}

// rtColumn is one old column the reverse writes.
type rtColumn struct {
	name     string
	typ      string // old column type without modifiers: what the reverse casts to
	fullType string // with modifiers, applied as the INSERT into the table would
	// byValue compares with the type's own equality; types without a
	// btree equality (json, geometric types, ...) compare as text.
	byValue bool
}

// rtKey is one old key column: the walk's order and the carried key.
type rtKey struct{ name, typ string }

// roundTrip is one table's proof in progress.
type roundTrip struct {
	old, new *pgx.Conn
	fwd, rev *transform.Mapping
	opt      RoundTripOptions
	log      *slog.Logger
	pace     *pacer
	rep      *RoundTripReport

	oldRel             string
	keys               []rtKey
	cols               []rtColumn
	fwdIn, fwdOut      string // temp tables on the new database
	revIn, bounds      string // temp tables on the old database
	binaryOut, binBack bool   // COPY format old -> new, new -> old
	examples           []int  // per column
	dropExamples       int
}

// RoundTrip checks old -> fwd -> rev == old for the rows of one table. fwd
// maps the old table onto the new one, rev the new table back onto the old
// one, both built by transform.Plan against the database they write to.
// old is only read, in read-only transactions, apart from temp tables on
// both connections, which are dropped before it returns. Both connections
// get verify's session settings (see Connect).
func RoundTrip(ctx context.Context, old, new *pgx.Conn, fwd, rev *transform.Mapping, opt RoundTripOptions) (*RoundTripReport, error) {
	if opt.RangeRows <= 0 {
		opt.RangeRows = defaultRangeRows
	}
	if opt.MaxExamples <= 0 {
		opt.MaxExamples = defaultMaxExamples
	}
	log := opt.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rt := &roundTrip{
		old: old, new: new, fwd: fwd, rev: rev, opt: opt, pace: newPacer(opt.RowsPerSecond),
		log: log.With("component", "roundtrip", "table", rev.TargetName, "via", fwd.TargetName),
		rep: &RoundTripReport{Table: rev.TargetName, Via: fwd.TargetName, Columns: map[string]int64{}, Sampled: opt.Sample > 0},
	}
	started := time.Now()
	defer func() { rt.rep.Seconds = time.Since(started).Seconds() }()
	fail := func(err error) (*RoundTripReport, error) {
		return rt.rep, fmt.Errorf("round trip %s -> %s -> %s: %w", rev.TargetName, fwd.TargetName, rev.TargetName, err)
	}
	if err := rt.plan(ctx); err != nil {
		return fail(err)
	}
	for _, conn := range []*pgx.Conn{old, new} {
		if err := prepareSession(ctx, conn); err != nil {
			return fail(fmt.Errorf("prepare session: %w", err))
		}
	}
	if err := rt.createTemp(ctx); err != nil {
		rt.dropTemp(ctx)
		return fail(err)
	}
	defer rt.dropTemp(ctx)
	rt.log.Info("proving the round trip", "sample", opt.Sample, "range_rows", opt.RangeRows,
		"compared", len(rt.cols), "not_carried", rt.rep.NotCarried, "unwritten", rt.rep.Unwritten)
	var err error
	if opt.Sample > 0 {
		err = rt.walkSample(ctx)
	} else {
		err = rt.walk(ctx, math.MaxInt64)
	}
	if err != nil {
		return fail(err)
	}
	rt.log.Info("round trip checked", "rows", rt.rep.Rows, "lossy", rt.rep.Lossy, "columns", rt.rep.Columns,
		"skipped", rt.rep.Skipped, "ranges", rt.rep.Ranges, "seconds", time.Since(started).Seconds())
	return rt.rep, nil
}

// plan checks the two mappings fit together and derives what the proof
// compares.
func (rt *roundTrip) plan(ctx context.Context) error {
	fwd, rev := rt.fwd, rt.rev
	oldT, newT := rev.Target, fwd.Target
	if !sameTable(fwd.SourceName, oldT.String()) || !sameTable(rev.SourceName, newT.String()) {
		return fmt.Errorf("the forward mapping goes %s -> %s and the reverse %s -> %s: the reverse must map the forward's target back onto its source",
			fwd.SourceName, fwd.TargetName, rev.SourceName, rev.TargetName)
	}
	rt.oldRel = oldT.QualifiedName()
	fwdSrc := map[string]bool{}
	for _, c := range fwd.Source {
		fwdSrc[c.Name] = true
	}
	for _, k := range rev.Key {
		if !fwdSrc[k] {
			return fmt.Errorf("old key column %s.%s is not a column the forward mapping reads (generated?): key the reverse mapping on stored columns", oldT, k)
		}
		rt.keys = append(rt.keys, rtKey{name: k, typ: oldT.Column(k).Type})
	}
	for _, c := range rev.Source {
		if newT.Column(c.Name) == nil {
			return fmt.Errorf("the reverse mapping reads %s.%s, which the forward mapping's target lacks: compile both against the same new table", rev.SourceName, c.Name)
		}
	}
	written := map[string]bool{}
	for _, c := range fwd.Columns {
		written[c.Name] = true
	}
	unwritten := map[string]bool{}
	for _, c := range rev.Columns {
		oc := oldT.Column(c.Name)
		byValue, err := hasBtreeEquality(ctx, rt.old, oc.TypeOID)
		if err != nil {
			return err
		}
		rt.cols = append(rt.cols, rtColumn{name: c.Name, typ: c.Type, fullType: oc.FullType, byValue: byValue})
		rt.rep.Compared = append(rt.rep.Compared, c.Name)
		for _, d := range c.Deps {
			unwritten[rev.Source[d].Name] = !written[rev.Source[d].Name]
		}
	}
	for _, ref := range transform.References(rev.Filter) {
		if newT.Column(ref) != nil {
			unwritten[ref] = !written[ref]
		}
	}
	for _, c := range newT.Columns {
		if unwritten[c.Name] {
			rt.rep.Unwritten = append(rt.rep.Unwritten, c.Name)
		}
	}
	for _, c := range oldT.Columns {
		if !c.Generated && !slices.Contains(rt.rep.Compared, c.Name) {
			rt.rep.NotCarried = append(rt.rep.NotCarried, c.Name)
		}
	}
	rt.examples = make([]int, len(rt.cols))
	rt.fwdIn, rt.fwdOut = fwd.StageName("tandem_rt_in"), fwd.StageName("tandem_rt_out")
	rt.revIn, rt.bounds = rev.StageName("tandem_rt_back"), rev.StageName("tandem_rt_bounds")
	keySrc := make([]transform.SourceColumn, len(rt.keys))
	for i, k := range rt.keys {
		keySrc[i] = transform.SourceColumn{TypeOID: oldT.Column(k.name).TypeOID}
	}
	rt.binaryOut = fwd.BinarySource()
	rt.binBack = rev.BinarySource() && (&transform.Mapping{Source: keySrc}).BinarySource()
	return nil
}

// hasBtreeEquality reports whether values of a type (an array's element,
// a domain's base) have a default btree equality, which then decides
// equal values; other types are compared by their text.
func hasBtreeEquality(ctx context.Context, conn *pgx.Conn, typ uint32) (bool, error) {
	const q = `
WITH RECURSIVE peel(oid, depth) AS (
	SELECT $1::oid, 0
	UNION ALL
	SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END, p.depth + 1
	FROM peel p JOIN pg_type t ON t.oid = p.oid
	WHERE p.depth < 32 AND (t.typtype = 'd' OR t.typsubscript = 'array_subscript_handler'::regproc))
SELECT t.typtype IN ('e', 'r', 'm') OR EXISTS (
	SELECT 1 FROM pg_opclass c JOIN pg_am a ON a.oid = c.opcmethod
	WHERE a.amname = 'btree' AND c.opcdefault AND c.opcintype = t.oid)
FROM peel p JOIN pg_type t ON t.oid = p.oid
ORDER BY p.depth DESC LIMIT 1`
	var ok bool
	if err := conn.QueryRow(ctx, q, typ).Scan(&ok); err != nil {
		return false, fmt.Errorf("look up the equality of type %d on the old database: %w", typ, err)
	}
	return ok, nil
}

func (rt *roundTrip) carried() []transform.Carried {
	out := make([]transform.Carried, len(rt.keys))
	for i, k := range rt.keys {
		out[i] = transform.Carried{Name: transform.CarryName(i), Type: k.typ}
	}
	return out
}

func (rt *roundTrip) keyNames() []string {
	out := make([]string, len(rt.keys))
	for i, k := range rt.keys {
		out[i] = k.name
	}
	return out
}

// boundsDDL holds a range's bounds on the old database, for the COPY that
// reads it: COPY takes no parameters. lo is exclusive, st inclusive (a
// sampled range's start), hi inclusive.
func (rt *roundTrip) boundsDDL() string {
	var cols []string
	for _, side := range []string{"lo", "st", "hi"} {
		for i, k := range rt.keys {
			cols = append(cols, fmt.Sprintf("%s%d %s", side, i, k.typ))
		}
	}
	return fmt.Sprintf("CREATE TEMP TABLE %s (%s) ON COMMIT DELETE ROWS", quote(rt.bounds), strings.Join(cols, ", "))
}

// createTemp creates the temp tables, in read-write transactions of their
// own: a read-only one may fill a temp table but not create it.
func (rt *roundTrip) createTemp(ctx context.Context) error {
	fwdIn, _ := rt.fwd.RoundTripStage(rt.fwdIn, nil, rt.binaryOut)
	revIn, _ := rt.rev.RoundTripStage(rt.revIn, rt.carried(), rt.binBack)
	for _, side := range []struct {
		conn  *pgx.Conn
		where string
		ddl   []string
	}{
		{rt.new, "new", []string{fwdIn, rt.fwd.RoundTripResultDDL(rt.fwdOut, rt.fwdCarried())}},
		{rt.old, "old", []string{revIn, rt.boundsDDL()}},
	} {
		err := pgx.BeginTxFunc(ctx, side.conn, pgx.TxOptions{AccessMode: pgx.ReadWrite}, func(tx pgx.Tx) error {
			for _, sql := range side.ddl {
				if _, err := tx.Exec(ctx, sql); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("create temp tables on the %s database (the role needs TEMPORARY on it, and a primary, not a standby): %w", side.where, err)
		}
	}
	return nil
}

// fwdCarried types the carried key on the new database as the forward
// binds the old key columns there.
func (rt *roundTrip) fwdCarried() []transform.Carried {
	out := rt.carried()
	for i, k := range rt.keys {
		for _, c := range rt.fwd.Source {
			if c.Name == k.name {
				out[i].Type = c.BindType
			}
		}
	}
	return out
}

// dropTemp drops the temp tables even when ctx is done; a connection that
// broke took them with it.
func (rt *roundTrip) dropTemp(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for _, side := range []struct {
		conn   *pgx.Conn
		tables []string
	}{{rt.new, []string{rt.fwdIn, rt.fwdOut}}, {rt.old, []string{rt.revIn, rt.bounds}}} {
		if side.conn.IsClosed() {
			continue
		}
		names := make([]string, len(side.tables))
		for i, t := range side.tables {
			names[i] = quote(t)
		}
		err := pgx.BeginTxFunc(ctx, side.conn, pgx.TxOptions{AccessMode: pgx.ReadWrite}, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "DROP TABLE IF EXISTS "+strings.Join(names, ", "))
			return err
		})
		if err != nil {
			rt.log.Warn("could not drop the round trip's temp tables; they go with the session", "err", err)
		}
	}
}

// walk checks the table in ranges from its start, to its end or until
// budget rows were read.
func (rt *roundTrip) walk(ctx context.Context, budget int64) error {
	var lower []string
	for budget > 0 {
		n := int64(rt.opt.RangeRows)
		if n > budget {
			n = budget
		}
		upper, read, err := rt.checkRange(ctx, rng{lo: lower}, n)
		if err != nil {
			return err
		}
		budget -= read
		if upper == nil {
			return nil
		}
		lower = upper
	}
	return nil
}

// walkSample checks ranges that start at keys sampled over the whole table
// (TABLESAMPLE SYSTEM: whole pages, so it costs what it returns), each
// continuing past the previous range's end so none overlap. Small ranges,
// many of them, spread the sample; the rows read stay within Sample.
func (rt *roundTrip) walkSample(ctx context.Context) error {
	sample := int64(rt.opt.Sample)
	if est := rt.rev.Target.EstimatedRows; est >= 0 && est <= sample {
		return rt.walk(ctx, sample)
	}
	per := min(int64(rt.opt.RangeRows), max(sample/16, 100))
	ranges := (sample + per - 1) / per
	starts, err := rt.sampleStarts(ctx, ranges)
	if err != nil {
		return err
	}
	if len(starts) == 0 {
		rt.log.Info("the sample found no rows; checking the table from its start instead")
		return rt.walk(ctx, sample)
	}
	var prev []string
	for _, st := range starts {
		n := min(per, sample)
		if n <= 0 {
			break
		}
		upper, read, err := rt.checkRange(ctx, rng{lo: prev, st: st}, n)
		if err != nil {
			return err
		}
		sample -= read
		if upper == nil {
			break // reached the end: later starts lie inside what was read
		}
		prev = upper
	}
	return nil
}

// sampleStarts returns up to n old keys spread over the table, in key
// order, from about 4n sampled pages.
func (rt *roundTrip) sampleStarts(ctx context.Context, n int64) ([][]string, error) {
	var pages int64
	err := rt.old.QueryRow(ctx, `SELECT COALESCE(sum(c.relpages), 0)::int8 FROM pg_class c
		WHERE c.oid = $1::regclass OR c.oid IN (SELECT relid FROM pg_partition_tree($1::regclass) WHERE isleaf)`, rt.oldRel).Scan(&pages)
	if err != nil {
		return nil, fmt.Errorf("size of %s: %w", rt.oldRel, err)
	}
	pct := 100.0
	if pages > 0 {
		pct = min(100, max(0.0001, 100*float64(4*n)/float64(pages)))
	} else {
		rt.log.Info("the old table was never vacuumed or analyzed, so its size is unknown: sampling reads all of it once (ANALYZE it to sample a few pages)")
	}
	texts := make([]string, len(rt.keys))
	cols := make([]string, len(rt.keys))
	order := make([]string, len(rt.keys))
	for i, k := range rt.keys {
		texts[i] = "s." + quote(k.name) + "::text"
		cols[i] = fmt.Sprintf("s.%s AS o%d", quote(k.name), i)
		order[i] = fmt.Sprintf("o%d", i)
	}
	// Each sampled page holds many rows: 8n of them come back, picked at
	// random, sorted by the key columns themselves (in their collation, as
	// the ranges are walked), to choose n evenly spaced starts from.
	sql := fmt.Sprintf("SELECT k FROM (SELECT ARRAY[%s] AS k, %s FROM %s AS s TABLESAMPLE SYSTEM ($1) ORDER BY random() LIMIT $2) x ORDER BY %s",
		strings.Join(texts, ", "), strings.Join(cols, ", "), rt.oldRel, strings.Join(order, ", "))
	var keys [][]string
	err = pgx.BeginTxFunc(ctx, rt.old, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, sql, pct, 8*n)
		if err != nil {
			return err
		}
		keys, err = pgx.CollectRows(rows, pgx.RowTo[[]string])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sample start keys of %s: %w", rt.oldRel, err)
	}
	if int64(len(keys)) <= n {
		return keys, nil
	}
	out := make([][]string, n)
	for i := range out {
		out[i] = keys[int64(i)*int64(len(keys))/n]
	}
	return out, nil
}

// rng is a key range's lower bounds: after lo and from st on (nil: none).
type rng struct{ lo, st []string }

func (rt *roundTrip) keyTuple(alias string) string {
	parts := make([]string, len(rt.keys))
	for i, k := range rt.keys {
		parts[i] = alias + "." + quote(k.name)
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// rangeWhere renders the range over alias as it stands in the bounds
// table: no parameters, so COPY can read it.
func (rt *roundTrip) rangeWhere(alias string, r rng, upper bool) string {
	bound := func(side string) string {
		parts := make([]string, len(rt.keys))
		for i := range rt.keys {
			parts[i] = fmt.Sprintf("b.%s%d", side, i)
		}
		return fmt.Sprintf("(SELECT %s FROM %s AS b)", strings.Join(parts, ", "), quote(rt.bounds))
	}
	var conds []string
	if r.lo != nil {
		conds = append(conds, rt.keyTuple(alias)+" > "+bound("lo"))
	}
	if r.st != nil {
		conds = append(conds, rt.keyTuple(alias)+" >= "+bound("st"))
	}
	if upper {
		conds = append(conds, rt.keyTuple(alias)+" <= "+bound("hi"))
	}
	return strings.Join(conds, " AND ")
}

// bind renders key values as parameters cast to the old key types.
func (rt *roundTrip) bind(a *args, key []string) string {
	parts := make([]string, len(rt.keys))
	for i, k := range rt.keys {
		var v any
		if key != nil {
			v = key[i]
		}
		parts[i] = a.add(v) + "::" + k.typ
	}
	return strings.Join(parts, ", ")
}

// checkRange checks up to n old rows from r on, in one read-only snapshot
// of the old database, and returns the last key read (nil when the table
// ended first) and the rows read.
func (rt *roundTrip) checkRange(ctx context.Context, r rng, n int64) (upper []string, read int64, err error) {
	otx, err := rt.old.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, 0, fmt.Errorf("begin a read-only transaction on the old database: %w", err)
	}
	defer otx.Rollback(ctx) //nolint:errcheck // a committed transaction makes this a no-op
	if upper, err = rt.rangeEnd(ctx, otx, r, n); err != nil {
		return nil, 0, err
	}
	var a args
	sql := fmt.Sprintf("INSERT INTO %s VALUES (%s, %s, %s)", quote(rt.bounds), rt.bind(&a, r.lo), rt.bind(&a, r.st), rt.bind(&a, upper))
	if _, err := otx.Exec(ctx, sql, a...); err != nil {
		return nil, 0, fmt.Errorf("hold the range's bounds: %w", err)
	}
	passed, err := rt.forward(ctx, r, upper != nil, &read)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", rangeLabel(r), err)
	}
	if err := rt.compare(ctx, otx, r, upper != nil); err != nil {
		return nil, 0, fmt.Errorf("%s: %w", rangeLabel(r), err)
	}
	if err := otx.Commit(ctx); err != nil {
		return nil, 0, fmt.Errorf("end the old database's read: %w", err)
	}
	rt.rep.Ranges++
	rt.rep.Rows += passed
	rt.rep.Skipped += read - passed
	rt.log.Debug("range checked", "from", rangeStart(r), "to", upper, "read", read, "passed", passed, "lossy", rt.rep.Lossy)
	return upper, read, rt.pace.wait(ctx, read)
}

func rangeStart(r rng) []string {
	if r.st != nil {
		return r.st
	}
	return r.lo
}

// rangeLabel names a range in errors, by the old key it starts after.
func rangeLabel(r rng) string {
	if k := rangeStart(r); k != nil {
		return fmt.Sprintf("range from key %v", k)
	}
	return "first range"
}

// rangeEnd is the key of the n-th old row of the range, or nil when the
// range holds fewer.
func (rt *roundTrip) rangeEnd(ctx context.Context, tx pgx.Tx, r rng, n int64) ([]string, error) {
	var a args
	var conds []string
	if r.lo != nil {
		conds = append(conds, rt.keyTuple("s")+" > ("+rt.bind(&a, r.lo)+")")
	}
	if r.st != nil {
		conds = append(conds, rt.keyTuple("s")+" >= ("+rt.bind(&a, r.st)+")")
	}
	texts := make([]string, len(rt.keys))
	for i, k := range rt.keys {
		texts[i] = "s." + quote(k.name) + "::text"
	}
	sql := fmt.Sprintf("SELECT ARRAY[%s] FROM %s AS s%s ORDER BY %s OFFSET %s LIMIT 1",
		strings.Join(texts, ", "), rt.oldRel, where(conds), strings.Trim(rt.keyTuple("s"), "()"), a.add(n-1))
	var upper []string
	err := tx.QueryRow(ctx, sql, a...).Scan(&upper)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: find its end on the old database: %w", rangeLabel(r), err)
	}
	return upper, nil
}

// forward copies the range's old rows to the new database, maps them there
// and copies the results back into the old database's stage, inside a
// transaction on the new database whose rows vanish at its commit. It
// returns the rows passing the forward filter, and counts the rows read.
func (rt *roundTrip) forward(ctx context.Context, r rng, upper bool, read *int64) (int64, error) {
	ntx, err := rt.new.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("begin on the new database: %w", err)
	}
	defer ntx.Rollback(ctx) //nolint:errcheck // a committed transaction makes this a no-op
	_, stageCopy := rt.fwd.RoundTripStage(rt.fwdIn, nil, rt.binaryOut)
	out := rt.fwd.SourceCopyOutSQL(rt.oldRel, rt.rangeWhere("s", r, upper), rt.binaryOut)
	if *read, err = pipeCopy(ctx, rt.old, out, rt.new, stageCopy); err != nil {
		return 0, fmt.Errorf("copy old rows to the new database: %w", err)
	}
	tag, err := ntx.Exec(ctx, rt.fwd.RoundTripForwardSQL(rt.fwdIn, rt.fwdOut, rt.keyNames()))
	if err != nil {
		return 0, fmt.Errorf("evaluate the forward mapping on the new database: an expression fails on a row of this range (PostgreSQL's message quotes the value); fix the expression or the row: %w", err)
	}
	_, backCopy := rt.rev.RoundTripStage(rt.revIn, rt.carried(), rt.binBack)
	out = rt.rev.RoundTripCopyOutSQL(rt.fwdOut, len(rt.keys), rt.binBack)
	if _, err := pipeCopy(ctx, rt.new, out, rt.old, backCopy); err != nil {
		return 0, fmt.Errorf("copy new rows back to the old database: %w", err)
	}
	if err := ntx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit on the new database: %w", err)
	}
	return tag.RowsAffected(), nil
}

// pipeCopy streams the rows of one server's COPY TO into another's COPY
// FROM, holding none of them.
func pipeCopy(ctx context.Context, from *pgx.Conn, out string, to *pgx.Conn, in string) (int64, error) {
	pr, pw := io.Pipe()
	var outErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, outErr = from.PgConn().CopyTo(ctx, pw, out)
		pw.CloseWithError(outErr) // nil: the reader sees EOF
	}()
	tag, inErr := to.PgConn().CopyFrom(ctx, pr, in)
	if inErr != nil {
		// pgconn closes a connection whose COPY TO writer fails; draining
		// lets the sending COPY finish and its connection live on.
		_, _ = io.Copy(io.Discard, pr)
	}
	<-done
	if outErr != nil {
		return 0, fmt.Errorf("read: %w", outErr)
	}
	if inErr != nil {
		return 0, fmt.Errorf("write: %w", inErr)
	}
	return tag.RowsAffected(), nil
}

// compareSQL evaluates the reverse mapping over the staged rows on the old
// database and returns, for each row that does not come back whole, its
// old key, whether it passed the reverse filter, which compared columns
// differ and, for the columns $1 asks for, the old and round-tripped
// values as text. The old rows are joined by the carried key within the
// range, so the planner reads them by index however large the table.
// OFFSET 0 keeps the planner from pulling d up into every reference to
// it, which would compare every column again for each one.
func (rt *roundTrip) compareSQL(r rng, upper bool) string {
	keyTexts := make([]string, len(rt.keys))
	join := make([]string, len(rt.keys))
	for i, k := range rt.keys {
		keyTexts[i] = "o." + quote(k.name) + "::text"
		join[i] = fmt.Sprintf("o.%s = r.%s", quote(k.name), transform.CarryName(i))
	}
	if w := rt.rangeWhere("o", r, upper); w != "" {
		join = append(join, w)
	}
	inner := []string{"ARRAY[" + strings.Join(keyTexts, ", ") + "] AS k", "r." + transform.PassColumn + " AS pass"}
	diffs := make([]string, len(rt.cols))
	olds := make([]string, len(rt.cols))
	backs := make([]string, len(rt.cols))
	for i, c := range rt.cols {
		back := "r." + quote(c.name)
		if c.fullType != c.typ {
			back = fmt.Sprintf("(%s)::%s", back, c.fullType)
		}
		inner = append(inner, fmt.Sprintf("o.%s AS o%d", quote(c.name), i), fmt.Sprintf("%s AS b%d", back, i))
		if c.byValue {
			diffs[i] = fmt.Sprintf("o%d IS DISTINCT FROM b%d", i, i)
		} else {
			diffs[i] = fmt.Sprintf("o%d::text IS DISTINCT FROM b%d::text", i, i)
		}
		olds[i] = fmt.Sprintf("CASE WHEN ($1::bool[])[%d] AND d[%d] THEN o%d::text END", i+1, i+1, i)
		backs[i] = fmt.Sprintf("CASE WHEN ($1::bool[])[%d] AND d[%d] THEN b%d::text END", i+1, i+1, i)
	}
	return fmt.Sprintf(`SELECT k, pass, d, ARRAY[%s]::text[], ARRAY[%s]::text[]
FROM (SELECT *, ARRAY[%s] AS d FROM (SELECT %s FROM (%s) AS r JOIN %s AS o ON %s) AS y OFFSET 0) AS x
WHERE NOT pass OR true = ANY (d)`,
		strings.Join(olds, ", "), strings.Join(backs, ", "), strings.Join(diffs, ", "),
		strings.Join(inner, ", "), rt.rev.RoundTripProjectSQL(rt.revIn, carryNames(len(rt.keys))), rt.oldRel, strings.Join(join, " AND "))
}

func carryNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = transform.CarryName(i)
	}
	return out
}

// compare runs compareSQL in the range's snapshot and records what does
// not come back.
func (rt *roundTrip) compare(ctx context.Context, tx pgx.Tx, r rng, upper bool) error {
	want := make([]bool, len(rt.cols))
	for i := range want {
		want[i] = rt.examples[i] < rt.opt.MaxExamples
	}
	rows, err := tx.Query(ctx, rt.compareSQL(r, upper), want)
	if err != nil {
		return fmt.Errorf("evaluate the reverse mapping on the old database: an expression fails on a row of this range (PostgreSQL's message quotes the value); fix the expression: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var key []string
		var pass bool
		var diff []bool
		var olds, backs []*string
		if err := rows.Scan(&key, &pass, &diff, &olds, &backs); err != nil {
			return fmt.Errorf("read lossy rows: %w", err)
		}
		rt.record(key, pass, diff, olds, backs)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("evaluate the reverse mapping on the old database: an expression fails on a row of this range (PostgreSQL's message quotes the value); fix the expression: %w", err)
	}
	return nil
}

func (rt *roundTrip) record(key []string, pass bool, diff []bool, olds, backs []*string) {
	rep := rt.rep
	rep.Lossy++
	kv := make([]KeyValue, len(key))
	for i := range key {
		kv[i] = KeyValue{Column: rt.keys[i].name, Value: &key[i]}
	}
	if !pass {
		rep.Dropped++
		if rt.dropExamples < rt.opt.MaxExamples {
			rt.dropExamples++
			rep.Examples = append(rep.Examples, RoundTripRow{Key: kv})
		}
		return
	}
	for i, d := range diff {
		if !d {
			continue
		}
		rep.Columns[rt.cols[i].name]++
		// Values are only read for columns that still wanted examples
		// when the range was compared; a differing pair is never NULL on
		// both sides.
		if rt.examples[i] < rt.opt.MaxExamples && (olds[i] != nil || backs[i] != nil) {
			rt.examples[i]++
			rep.Examples = append(rep.Examples, RoundTripRow{Key: kv, Column: rt.cols[i].name, Old: olds[i], Back: backs[i]})
		}
	}
}
