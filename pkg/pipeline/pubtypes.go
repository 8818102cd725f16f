package pipeline

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// firstUserOID is where user-defined types start; built-in types have the
// same OID on every server.
const firstUserOID = 16384

// baseTypes maps the type of a published value to the one that says how
// it is written in JSON: a domain (posint over integer) to its base type.
// Other user types (enums, composites) stay as they are, as strings.
type baseTypes struct {
	conn *pgx.Conn
	base map[uint32]uint32
}

// of returns oids with each domain replaced by its base type, looking up
// the user types it has not met yet (one query).
func (b *baseTypes) of(ctx context.Context, oids []uint32) ([]uint32, error) {
	var unknown []uint32
	for _, o := range oids {
		if _, ok := b.base[o]; !ok && o >= firstUserOID {
			unknown = append(unknown, o)
		}
	}
	if len(unknown) > 0 {
		if b.base == nil {
			b.base = map[uint32]uint32{}
		}
		rows, err := b.conn.Query(ctx, `WITH RECURSIVE d(oid, base) AS (
				SELECT oid, CASE WHEN typtype = 'd' THEN typbasetype ELSE oid END FROM pg_type WHERE oid = ANY($1::oid[])
				UNION ALL
				SELECT d.oid, t.typbasetype FROM d JOIN pg_type t ON t.oid = d.base AND t.typtype = 'd')
			SELECT d.oid, d.base FROM d JOIN pg_type t ON t.oid = d.base WHERE t.typtype <> 'd'`, unknown)
		if err != nil {
			return nil, fmt.Errorf("publish: look up the base types of domains: %w", err)
		}
		for rows.Next() {
			var o, base uint32
			if err := rows.Scan(&o, &base); err != nil {
				rows.Close()
				return nil, fmt.Errorf("publish: look up the base types of domains: %w", err)
			}
			b.base[o] = base
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("publish: look up the base types of domains: %w", err)
		}
		for _, o := range unknown {
			if _, ok := b.base[o]; !ok {
				b.base[o] = o // dropped meanwhile: written as a string
			}
		}
	}
	out := make([]uint32, len(oids))
	for i, o := range oids {
		out[i] = o
		if base, ok := b.base[o]; ok {
			out[i] = base
		}
	}
	return out, nil
}
