package verify

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

// Range mode: both sides summed in the same key ranges, a differing range
// drilled down to its rows.

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
