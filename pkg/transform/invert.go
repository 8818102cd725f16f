package transform

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/config"
)

// Inverse is the reverse table entry (new -> old) derived from a forward
// mapping, with what it leaves behind.
type Inverse struct {
	Table config.TableConfig
	// NotCarried lists old columns no new column feeds: rows inserted on
	// the new database get their default (or NULL) there, and updates
	// leave them as they were.
	NotCarried []string
}

var bareIdent = regexp.MustCompile(`^(?:[a-z_][a-z0-9_$]*|"(?:[^"]|"")+")$`)

// PlainColumn reports the source column an expression merely names, so a
// copy or rename inverts without the user writing it.
func PlainColumn(expr string, src []SourceColumn) (string, bool) {
	e := strings.TrimSpace(expr)
	if !bareIdent.MatchString(e) {
		return "", false
	}
	name := e
	if strings.HasPrefix(e, `"`) {
		name = strings.ReplaceAll(e[1:len(e)-1], `""`, `"`)
	}
	for _, c := range src {
		if c.Name == name {
			return name, true
		}
	}
	return "", false
}

// Invert derives the reverse entry of a compiled forward mapping: every
// old column is written from the new column it was copied or renamed to,
// from the user's inverse (rev.Columns), or not at all when the new schema
// dropped it (then it must be nullable or have a default). An old column
// that feeds a new one through an expression needs its inverse written:
// guessing one would carry rows back wrong without a word. newCols are the
// new table's writable columns (the reverse's source row). field names the
// forward entry ("tables[2]") for errors.
func Invert(field string, fwd *Mapping, old *catalog.Table, newCols []SourceColumn, rev *config.TableReverse) (*Inverse, error) {
	if rev == nil {
		rev = &config.TableReverse{}
	}
	var errs []error
	fail := func(f, format string, args ...any) {
		errs = append(errs, &Error{Field: f, Msg: fmt.Sprintf(format, args...)})
	}
	for name := range rev.Columns {
		c := old.Column(name)
		switch {
		case c == nil:
			fail(field+".reverse.columns."+name, "old table %s has no column %q", fwd.SourceName, name)
		case c.Generated:
			fail(field+".reverse.columns."+name, "old column %s.%s is generated; it cannot be written", fwd.SourceName, name)
		}
	}
	// Key columns first, so a column copied twice inverts from the key.
	cols := append([]TargetColumn(nil), fwd.Columns...)
	isKey := map[string]bool{}
	for _, k := range fwd.Key {
		isKey[k] = true
	}
	sort.SliceStable(cols, func(i, j int) bool { return isKey[cols[i].Name] && !isKey[cols[j].Name] })
	copiedTo := map[string]string{} // old column -> new column holding it as is
	fedBy := map[string][]string{}  // old column -> new columns computed from it
	for _, c := range cols {
		if s, ok := PlainColumn(c.Expr, fwd.Source); ok {
			if _, seen := copiedTo[s]; !seen {
				copiedTo[s] = c.Name
			}
			continue
		}
		for _, d := range c.Deps {
			s := fwd.Source[d].Name
			fedBy[s] = append(fedBy[s], c.Name)
		}
	}
	inv := &Inverse{Table: config.TableConfig{
		Source:  fwd.TargetName,
		Target:  fwd.SourceName,
		Filter:  rev.Filter,
		Columns: map[string]string{},
	}}
	for _, c := range old.Columns {
		if c.Generated {
			continue
		}
		if expr, ok := rev.Columns[c.Name]; ok {
			inv.Table.Columns[c.Name] = expr
			continue
		}
		if n, ok := copiedTo[c.Name]; ok {
			inv.Table.Columns[c.Name] = pgx.Identifier{n}.Sanitize()
			continue
		}
		if fed := fedBy[c.Name]; len(fed) > 0 {
			fail(field+".reverse.columns."+c.Name, "old column %s.%s feeds new column(s) %s through an expression, which tandem cannot invert by itself: write its inverse, a SQL expression over the new table's columns (e.g. a CASE mapping each new value back)",
				fwd.SourceName, c.Name, strings.Join(fed, ", "))
			continue
		}
		if c.NotNull && !c.HasDefault {
			fail(field+".reverse.columns."+c.Name, "old column %s.%s is not in the new schema and is NOT NULL without a default: rows inserted on the new database after cutover need a value for it; give one (an expression over new columns, or a constant)",
				fwd.SourceName, c.Name)
			continue
		}
		inv.NotCarried = append(inv.NotCarried, c.Name)
	}
	// Everything is explicit: no new column may flow back by name alone,
	// since a same-named column may hold a transformed value.
	for _, c := range newCols {
		inv.Table.Drop = append(inv.Table.Drop, c.Name)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return inv, nil
}
