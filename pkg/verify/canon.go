package verify

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/catalog"
)

// firstUserOID is where user-defined objects start; a built-in type has the
// same OID and name on every server, so both sides can be cast to it.
const firstUserOID = 16384

// sessionSettings make the text output of every value independent of how
// the server or the role is configured, so equal values print equally on
// both databases: timestamps in UTC, floats with enough digits to round-trip,
// bytea in hex. They are session-level only; nothing is written.
var sessionSettings = []struct{ name, value string }{
	{"TimeZone", "UTC"},
	{"DateStyle", "ISO, YMD"},
	{"IntervalStyle", "postgres"},
	{"extra_float_digits", "3"},
	{"bytea_output", "hex"},
	{"lc_monetary", "C"},
}

// compareType is how one target column's values are compared. Both sides
// are brought to the same type before rendering text, so the comparison is
// of values: the source expression is cast exactly as the stream casts it
// (including the column's modifiers, so rounding to numeric(10,2) or
// timestamp(0) happens on both sides alike).
type compareType struct {
	// full is the cast target with modifiers, e.g. numeric(12,2); "text"
	// for user-defined types that may not exist on the source.
	full string
	// base is the type name without modifiers; it selects the canonical
	// text rendering.
	base string
}

// resolveCompareType picks the comparison type of a target column: built-in
// types compare as themselves; a domain as its base type (its labels and
// checks do not change the value); any other user-defined type (enum,
// composite, arrays of them) as text, since the source may not know it.
func resolveCompareType(ctx context.Context, tgt catalog.Querier, col *catalog.Column) (compareType, error) {
	if col.TypeOID < firstUserOID {
		return compareType{full: col.FullType, base: col.Type}, nil
	}
	oid, mod := col.TypeOID, int32(-1)
	for range 32 { // domains over domains; the bound only guards against a cycle
		var typtype string
		var base uint32
		var typmod int32
		err := tgt.QueryRow(ctx, `SELECT typtype::text, typbasetype, typtypmod FROM pg_type WHERE oid = $1`, oid).Scan(&typtype, &base, &typmod)
		if err != nil {
			return compareType{}, fmt.Errorf("resolve type of column %s: %w", col.Name, err)
		}
		if typtype != "d" {
			break
		}
		oid = base
		if typmod != -1 {
			mod = typmod
		}
	}
	if oid >= firstUserOID {
		return compareType{full: "text", base: "text"}, nil
	}
	var ct compareType
	err := tgt.QueryRow(ctx, `SELECT format_type($1, $2), format_type($1, NULL)`, oid, mod).Scan(&ct.full, &ct.base)
	if err != nil {
		return compareType{}, fmt.Errorf("resolve base type of column %s: %w", col.Name, err)
	}
	return ct, nil
}

// sourceValue is the SQL, evaluated on the source, of a mapped column's
// value brought to the comparison type.
func (c compareType) sourceValue(expr string) string {
	return fmt.Sprintf("(%s)::%s", expr, c.full)
}

// targetValue is the SQL, evaluated on the target, of a column's value
// brought to the comparison type.
func (c compareType) targetValue(alias, column string) string {
	return fmt.Sprintf("(%s.%s)::%s", alias, pgx.Identifier{column}.Sanitize(), c.full)
}

// canonical renders a value (SQL of the comparison type) as canonical text.
// This is the one place that decides when two values are equal:
//   - numeric: trim_scale, so 1.0 = 1.00 (the scale is not part of the value);
//   - json: through jsonb, so key order and whitespace do not count;
//   - jsonb, arrays, bytea, timestamps, floats: their text output is
//     canonical under sessionSettings (jsonb sorts keys; UTC; hex; shortest
//     exact float digits).
//
// NULL stays NULL; the row text built from these (ROW(...)::text) keeps NULL
// apart from the empty string. Known gap: numeric[] keeps each element's scale.
func (c compareType) canonical(value string) string {
	switch c.base {
	case "numeric":
		return fmt.Sprintf("trim_scale(%s)::text", value)
	case "json":
		return fmt.Sprintf("(%s)::jsonb::text", value)
	default:
		return fmt.Sprintf("(%s)::text", value)
	}
}
