package verify

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Keys mode: both sides paged by key and hashed row by row.

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
