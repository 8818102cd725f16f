package verify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/tandem-migrate/tandem/pkg/checkpoint"
)

// maxPending bounds the keys held in memory in range mode (rows a chunk
// could not pair). Past it the tables differ so much that exact counts stop
// mattering; the pass stops with a truncated, lower-bound report.
const maxPending = 1_000_000

// fetchBatch is how many keys one by-key lookup binds.
const fetchBatch = 1000

// env is what the tables of one verification share.
type env struct {
	src, tgt *pgx.Conn
	opts     Options
	log      *slog.Logger
	pace     *pacer
	// store is the stream's checkpoint, read in live mode only.
	store checkpoint.Store
	// name is the migration's name, for messages.
	name string
}

// tableVerifier runs one pass over one table in steps (one chunk or page
// each), so Run can loop to the end and Shadow can interleave tables.
type tableVerifier struct {
	env *env
	p   *plan
	log *slog.Logger

	rec       *reconciler
	equal     int64 // rows of chunks whose checksums matched
	chunks    int64
	cursor    []string // range: last source key; keys mode: page cursor of the side being read
	onTarget  bool     // keys mode: source pages done, reading target pages
	done      bool
	truncated bool
	started   time.Time
}

func newTableVerifier(e *env, p *plan) *tableVerifier {
	return &tableVerifier{
		env: e, p: p, rec: newReconciler(), started: time.Now(),
		log: e.log.With("table", p.label),
	}
}

func (v *tableVerifier) mode() string {
	if v.p.ranged {
		return "range"
	}
	return "keys"
}

// step reads one chunk (range mode) or one page (keys mode) and returns
// the source rows it covered.
func (v *tableVerifier) step(ctx context.Context) (int64, error) {
	if v.done {
		return 0, nil
	}
	var n int64
	var err error
	if v.p.ranged {
		n, err = v.rangeStep(ctx)
	} else {
		n, err = v.keysStep(ctx)
	}
	if err != nil {
		return n, err
	}
	v.chunks++
	if v.p.ranged && v.rec.pending() > maxPending {
		v.log.Warn("too many differing rows to hold; stopping this table early", "pending", v.rec.pending())
		v.truncated, v.done = true, true
	}
	return n, v.env.pace.wait(ctx, n)
}

type chunkSum struct {
	count int64
	sum   string
	// ordered is false when the target orders the range's bounds the
	// other way round (target chunks only).
	ordered bool
}

// fallBack restarts the table in keys mode: the target sorts keys unlike
// the source (another collation), so source key ranges would overlap on
// the target and count rows twice.
func (v *tableVerifier) fallBack(lower, upper []string) error {
	kp, err := v.p.keysMode()
	if err != nil {
		return fmt.Errorf("the target orders keys unlike the source (%v sorts after %v there), and %w", lower, upper, err)
	}
	v.log.Warn("the target orders keys unlike the source (another collation?); verifying by key lookups instead of key ranges",
		"lower", lower, "upper", upper)
	*v = *newTableVerifier(v.env, kp)
	return nil
}

// rangeStep compares the next range of source keys with the same range on
// the target by checksum, and drills down to rows only when they differ.
// The range is cut first (a key-only read), so both checksums can then run
// at once, each inside its own database.
func (v *tableVerifier) rangeStep(ctx context.Context) (int64, error) {
	lower := v.cursor
	upper, err := v.boundary(ctx)
	if err != nil {
		return 0, err
	}
	var src, tgt chunkSum
	err = both(ctx,
		func(ctx context.Context) (err error) { src, err = v.sourceChunk(ctx, lower, upper); return },
		func(ctx context.Context) (err error) { tgt, err = v.targetChunk(ctx, lower, upper); return })
	if err != nil {
		return 0, err
	}
	if !tgt.ordered {
		return 0, v.fallBack(lower, upper)
	}
	if src.count == tgt.count && src.sum == tgt.sum {
		v.equal += src.count
	} else {
		v.log.Debug("chunk differs", "source_rows", src.count, "target_rows", tgt.count, "from", lower, "to", upper)
		if err := v.drill(ctx, lower, upper); err != nil {
			return src.count, err
		}
	}
	v.cursor = upper
	v.done = upper == nil // the last range is open above, to catch extra target rows
	return src.count, nil
}

// both runs a source and a target read at once; each uses its own
// connection.
func both(ctx context.Context, src, tgt func(context.Context) error) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return src(ctx) })
	g.Go(func() error { return tgt(ctx) })
	return g.Wait()
}

// boundary returns the key of the ChunkRows-th source row after the cursor
// (source text, which round-trips to the source type), or nil when fewer
// remain. Only the key index and the filter's columns are read.
func (v *tableVerifier) boundary(ctx context.Context) ([]string, error) {
	p := v.p
	var a args
	conds := p.srcWhere()
	if v.cursor != nil {
		conds = append(conds, p.srcKeyTuple()+" > "+p.srcBound(&a, v.cursor))
	}
	texts := make([]string, len(p.keys))
	for i, k := range p.keys {
		texts[i] = srcAlias + "." + quote(k.srcName) + "::text"
	}
	sql := fmt.Sprintf("SELECT ARRAY[%s] FROM %s AS %s%s ORDER BY %s OFFSET %s LIMIT 1",
		strings.Join(texts, ", "), p.srcRel, srcAlias, where(conds), p.srcKeyOrder(), a.add(v.env.opts.ChunkRows-1))
	var upper []string
	err := v.env.src.QueryRow(ctx, sql, a...).Scan(&upper)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find the end of the source chunk after %v: %w", v.cursor, err)
	}
	return upper, nil
}

func (v *tableVerifier) sourceChunk(ctx context.Context, lower, upper []string) (chunkSum, error) {
	var a args
	sql := fmt.Sprintf("SELECT count(*), %s FROM %s AS %s%s",
		sumHash(v.p.rowHash('s')), v.p.srcRel, srcAlias, where(v.srcRange(&a, lower, upper)))
	var c chunkSum
	if err := v.env.src.QueryRow(ctx, sql, a...).Scan(&c.count, &c.sum); err != nil {
		return c, fmt.Errorf("checksum source chunk after %v: %w", lower, err)
	}
	return c, nil
}

// targetChunk checksums the same key range on the target, and checks the
// target sorts its bounds as the source does.
func (v *tableVerifier) targetChunk(ctx context.Context, lower, upper []string) (chunkSum, error) {
	var a args
	ordered := "true"
	if lower != nil && upper != nil {
		ordered = v.p.tgtBound(&a, lower) + " < " + v.p.tgtBound(&a, upper)
	}
	sql := fmt.Sprintf("SELECT count(*), %s, %s FROM %s AS %s%s",
		sumHash(v.p.rowHash('t')), ordered, v.p.tgtRel, tgtAlias, where(v.tgtRange(&a, lower, upper)))
	var c chunkSum
	if err := v.env.tgt.QueryRow(ctx, sql, a...).Scan(&c.count, &c.sum, &c.ordered); err != nil {
		return c, fmt.Errorf("checksum target chunk after %v: %w", lower, err)
	}
	return c, nil
}

func (v *tableVerifier) srcRange(a *args, lower, upper []string) []string {
	conds := v.p.srcWhere()
	if lower != nil {
		conds = append(conds, v.p.srcKeyTuple()+" > "+v.p.srcBound(a, lower))
	}
	if upper != nil {
		conds = append(conds, v.p.srcKeyTuple()+" <= "+v.p.srcBound(a, upper))
	}
	return conds
}

func (v *tableVerifier) tgtRange(a *args, lower, upper []string) []string {
	var conds []string
	if lower != nil {
		conds = append(conds, v.p.tgtKeyTuple()+" > "+v.p.tgtBound(a, lower))
	}
	if upper != nil {
		conds = append(conds, v.p.tgtKeyTuple()+" <= "+v.p.tgtBound(a, upper))
	}
	return conds
}

// drill reads the key and hash of every row of a differing chunk on both
// sides (never the rows themselves) and pairs them.
func (v *tableVerifier) drill(ctx context.Context, lower, upper []string) error {
	p := v.p
	var sa, ta args
	srcSQL := fmt.Sprintf("SELECT %s, %s FROM %s AS %s%s ORDER BY %s",
		p.keyArray('s'), p.rowHashText('s'), p.srcRel, srcAlias, where(v.srcRange(&sa, lower, upper)), p.srcKeyOrder())
	tgtSQL := fmt.Sprintf("SELECT %s, %s FROM %s AS %s%s ORDER BY %s",
		p.keyArray('t'), p.rowHashText('t'), p.tgtRel, tgtAlias, where(v.tgtRange(&ta, lower, upper)), strings.Trim(p.tgtKeyTuple(), "()"))
	var srcRows, tgtRows []keyRow
	collect := func(dst *[]keyRow) func([]string, string) {
		return func(key []string, hash string) { *dst = append(*dst, keyRow{key: key, hash: hash}) }
	}
	err := both(ctx,
		func(ctx context.Context) error {
			_, err := scanPage(ctx, v.env.src, srcSQL, sa, false, collect(&srcRows))
			return wrapIf(err, "row hashes of source chunk after %v", lower)
		},
		func(ctx context.Context) error {
			_, err := scanPage(ctx, v.env.tgt, tgtSQL, ta, false, collect(&tgtRows))
			return wrapIf(err, "row hashes of target chunk after %v", lower)
		})
	if err != nil {
		return err
	}
	for _, r := range srcRows {
		v.rec.source(r.key, r.hash)
	}
	for _, r := range tgtRows {
		v.rec.target(r.key, r.hash)
	}
	return v.env.pace.wait(ctx, int64(len(srcRows)))
}

func wrapIf(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf(format+": %w", append(args, err)...)
}

// scanPage runs a query returning (key text[], hash), preceded by the page
// cursor text[] when paged, and hands each row to fn.
func scanPage(ctx context.Context, conn *pgx.Conn, sql string, a args, paged bool, fn func(key []string, hash string)) (page, error) {
	rows, err := conn.Query(ctx, sql, a...)
	if err != nil {
		return page{}, err
	}
	defer rows.Close()
	var pg page
	for rows.Next() {
		var key []string
		var hash string
		dest := []any{&key, &hash}
		if paged {
			dest = []any{&pg.last, &key, &hash}
		}
		if err := rows.Scan(dest...); err != nil {
			return pg, err
		}
		pg.rows++
		fn(key, hash)
	}
	return pg, rows.Err()
}

type page struct {
	rows int64
	last []string
}

// keysStep reads one page in keys mode: first the source paged by its own
// key, then the target paged by its key; every row's computed key and hash
// is matched in memory.
func (v *tableVerifier) keysStep(ctx context.Context) (int64, error) {
	n := v.env.opts.ChunkRows
	if !v.onTarget {
		pg, err := v.sourcePage(ctx, n)
		if err != nil {
			return 0, err
		}
		v.cursor = pg.last
		if pg.rows < int64(n) {
			v.onTarget, v.cursor = true, nil
		}
		return pg.rows, nil
	}
	pg, err := v.targetPage(ctx, n)
	if err != nil {
		return 0, err
	}
	v.cursor = pg.last
	v.done = pg.rows < int64(n)
	return 0, nil
}

func (v *tableVerifier) sourcePage(ctx context.Context, n int) (page, error) {
	p := v.p
	var a args
	conds := p.srcWhere()
	cols := make([]string, len(p.srcPage))
	texts := make([]string, len(p.srcPage))
	binds := make([]string, len(p.srcPage))
	for i, c := range p.srcPage {
		cols[i] = srcAlias + "." + quote(c.name)
		texts[i] = cols[i] + "::text"
		if v.cursor != nil {
			binds[i] = a.add(v.cursor[i]) + "::" + c.typ
		}
	}
	if v.cursor != nil {
		conds = append(conds, "("+strings.Join(cols, ", ")+") > ("+strings.Join(binds, ", ")+")")
	}
	sql := fmt.Sprintf("SELECT ARRAY[%s], %s, %s FROM %s AS %s%s ORDER BY %s LIMIT %s",
		strings.Join(texts, ", "), p.keyArray('s'), p.rowHashText('s'), p.srcRel, srcAlias, where(conds), strings.Join(cols, ", "), a.add(n))
	pg, err := scanPage(ctx, v.env.src, sql, a, true, v.rec.source)
	if err != nil {
		return pg, fmt.Errorf("read source page after %v: %w", v.cursor, err)
	}
	return pg, nil
}

func (v *tableVerifier) targetPage(ctx context.Context, n int) (page, error) {
	p := v.p
	var a args
	var conds []string
	cols := make([]string, len(p.keys))
	texts := make([]string, len(p.keys))
	binds := make([]string, len(p.keys))
	for i, k := range p.keys {
		cols[i] = tgtAlias + "." + quote(k.name)
		texts[i] = cols[i] + "::text"
		if v.cursor != nil {
			binds[i] = a.add(v.cursor[i]) + "::" + k.tgtType
		}
	}
	if v.cursor != nil {
		conds = append(conds, "("+strings.Join(cols, ", ")+") > ("+strings.Join(binds, ", ")+")")
	}
	sql := fmt.Sprintf("SELECT ARRAY[%s], %s, %s FROM %s AS %s%s ORDER BY %s LIMIT %s",
		strings.Join(texts, ", "), p.keyArray('t'), p.rowHashText('t'), p.tgtRel, tgtAlias, where(conds), strings.Join(cols, ", "), a.add(n))
	pg, err := scanPage(ctx, v.env.tgt, sql, a, true, v.rec.target)
	if err != nil {
		return pg, fmt.Errorf("read target page after %v: %w", v.cursor, err)
	}
	return pg, nil
}

// finish ends the pass: it settles keys that only one side showed, re-checks
// every differing key after the stream caught up (live), and names the
// differing columns of the examples.
func (v *tableVerifier) finish(ctx context.Context) (*TableReport, error) {
	tr := &TableReport{Source: v.p.source, Target: v.p.target, Mode: v.mode(), Chunks: v.chunks, Truncated: v.truncated}
	cands := v.rec.candidates()
	equal := v.equal + v.rec.equal
	if v.env.opts.Live && len(cands) > 0 {
		tr.Rechecked = int64(len(cands))
		still, settled, err := v.recheck(ctx, cands)
		if err != nil {
			return tr, err
		}
		cands, equal = still, equal+settled
	}
	nullRows, nullExamples, err := v.nullKeyRows(ctx)
	if err != nil {
		return tr, err
	}
	cands = append(cands, v.rec.dups...)
	tr.Equal = equal
	tr.Missing = nullRows
	for _, c := range cands {
		switch c.kind {
		case Different:
			tr.Different++
		case Missing:
			tr.Missing++
		case Extra:
			tr.Extra++
		}
	}
	tr.Compared = tr.Equal + tr.Diffs()
	if tr.Examples, err = v.examples(ctx, cands); err != nil {
		return tr, err
	}
	tr.Examples = append(tr.Examples, nullExamples...)
	tr.Seconds = time.Since(v.started).Seconds()
	return tr, nil
}

// nullKeyRows counts source rows passing the filter whose target key would
// be NULL: they can never reach the target, so they are missing, and
// keyset pagination would otherwise skip them silently.
func (v *tableVerifier) nullKeyRows(ctx context.Context) (int64, []Diff, error) {
	cond := v.p.srcKeyNull()
	if cond == "" {
		return 0, nil, nil
	}
	conds := []string{"(" + cond + ")"}
	if v.p.filter != "" {
		conds = append(conds, "("+v.p.filter+")")
	}
	var a args
	sql := fmt.Sprintf("SELECT count(*) OVER (), %s::text[] FROM %s AS %s%s LIMIT %s",
		v.p.keyArray('s'), v.p.srcRel, srcAlias, where(conds), a.add(v.env.opts.MaxExamples))
	rows, err := v.env.src.Query(ctx, sql, a...)
	if err != nil {
		return 0, nil, fmt.Errorf("count source rows with a NULL key: %w", err)
	}
	defer rows.Close()
	var total int64
	var out []Diff
	for rows.Next() {
		var key []*string
		if err := rows.Scan(&total, &key); err != nil {
			return 0, nil, fmt.Errorf("count source rows with a NULL key: %w", err)
		}
		out = append(out, Diff{Kind: Missing, Key: v.keyValues(key)})
	}
	if err := rows.Err(); err != nil {
		return 0, nil, fmt.Errorf("count source rows with a NULL key: %w", err)
	}
	if total > 0 {
		v.log.Warn("source rows with a NULL key cannot be in the target", "rows", total)
	}
	return total, out, nil
}

func (v *tableVerifier) keyValues(key []*string) []KeyValue {
	out := make([]KeyValue, len(v.p.keys))
	for i, k := range v.p.keys {
		out[i] = KeyValue{Column: k.name, Value: key[i]}
	}
	return out
}

func strPtrs(ss []string) []*string {
	out := make([]*string, len(ss))
	for i := range ss {
		out[i] = &ss[i]
	}
	return out
}

// examples keeps the first MaxExamples of each kind and names the columns
// that differ by fetching just those rows from both sides.
func (v *tableVerifier) examples(ctx context.Context, cands []candidate) ([]Diff, error) {
	var out []Diff
	var diffKeys [][]string
	taken := map[Kind]int{}
	for _, c := range cands {
		if taken[c.kind] >= v.env.opts.MaxExamples {
			continue
		}
		taken[c.kind]++
		out = append(out, Diff{Kind: c.kind, Key: v.keyValues(strPtrs(c.key))})
		if c.kind == Different {
			diffKeys = append(diffKeys, c.key)
		}
	}
	if len(diffKeys) == 0 {
		return out, nil
	}
	var src, tgt map[string]fetched
	err := both(ctx,
		func(ctx context.Context) (err error) { src, err = v.fetchByKeys(ctx, 's', diffKeys, true); return },
		func(ctx context.Context) (err error) { tgt, err = v.fetchByKeys(ctx, 't', diffKeys, true); return })
	if err != nil {
		return out, err
	}
	for i := range out {
		if out[i].Kind != Different {
			continue
		}
		id := keyID(derefAll(out[i].Key))
		out[i].Columns = v.differingColumns(src[id].cols, tgt[id].cols)
	}
	return out, nil
}

func derefAll(kvs []KeyValue) []string {
	out := make([]string, len(kvs))
	for i, kv := range kvs {
		out[i] = *kv.Value
	}
	return out
}

func (v *tableVerifier) differingColumns(a, b []*string) []string {
	if a == nil || b == nil {
		return nil // the row changed again since; its kind stands, columns unknown
	}
	var out []string
	for i, c := range v.p.cols {
		if !eqNullable(a[i], b[i]) {
			out = append(out, c.name)
		}
	}
	return out
}

func eqNullable(a, b *string) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// fetched is one row looked up by key.
type fetched struct {
	hash string
	cols []*string
}

// fetchByKeys looks rows up by canonical key on one side, in batches.
func (v *tableVerifier) fetchByKeys(ctx context.Context, side byte, keys [][]string, withCols bool) (map[string]fetched, error) {
	out := make(map[string]fetched, len(keys))
	for start := 0; start < len(keys); start += fetchBatch {
		batch := keys[start:min(start+fetchBatch, len(keys))]
		if err := v.fetchBatch(ctx, side, batch, withCols, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (v *tableVerifier) fetchBatch(ctx context.Context, side byte, keys [][]string, withCols bool, out map[string]fetched) error {
	p := v.p
	var a args
	conn, rel, alias, conds := v.env.tgt, p.tgtRel, tgtAlias, []string{}
	if side == 's' {
		conn, rel, alias, conds = v.env.src, p.srcRel, srcAlias, p.srcWhere()
		conds = append(conds, p.srcByKeys(&a, keys))
	} else {
		conds = append(conds, p.tgtByKeys(&a, keys))
	}
	cols := "NULL::text[]"
	if withCols {
		cols = p.colArray(side)
	}
	sql := fmt.Sprintf("SELECT %s, %s, %s FROM %s AS %s%s", p.keyArray(side), p.rowHashText(side), cols, rel, alias, where(conds))
	rows, err := conn.Query(ctx, sql, a...)
	if err != nil {
		return fmt.Errorf("look up %d keys on the %s: %w", len(keys), sideName(side), err)
	}
	defer rows.Close()
	for rows.Next() {
		var key []string
		var f fetched
		if err := rows.Scan(&key, &f.hash, &f.cols); err != nil {
			return fmt.Errorf("look up keys on the %s: %w", sideName(side), err)
		}
		out[keyID(key)] = f
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("look up keys on the %s: %w", sideName(side), err)
	}
	if side == 's' {
		return v.env.pace.wait(ctx, int64(len(keys)))
	}
	return nil
}

func sideName(side byte) string {
	if side == 's' {
		return "source"
	}
	return "target"
}
