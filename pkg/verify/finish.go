package verify

import (
	"context"
	"fmt"
	"time"
)

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
