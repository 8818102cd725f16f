package transform

import (
	"fmt"
	"strings"
)

// Round-trip SQL: proving a reverse mapping (new -> old) runs rows through
// the forward mapping and then the reverse one, each evaluated by the
// database it writes to, as in production. Rows wait in temp tables between
// the steps, shaped by the mapping that reads them (the source row at its
// bind types, as StagedWrite stages it); the old row's key travels beside
// them under carry names, so every row that comes back is matched with the
// row it came from even when the mappings change the key.

// PassColumn is the projection's verdict on the mapping's filter.
const PassColumn = "tandem_rt_pass"

// CarryName is the column under which the i-th old key column travels.
func CarryName(i int) string { return fmt.Sprintf("tandem_rt_k%d", i) }

// Carried is a column staged beside the source row: name and SQL type.
type Carried struct{ Name, Type string }

// BinarySource reports whether rows of the source shape can travel between
// the servers in COPY binary: every source column is built-in (the same
// OID everywhere), bound as itself, and has binary send/receive.
func (m *Mapping) BinarySource() bool {
	for _, c := range m.Source {
		if c.TypeOID >= firstUserOID || noBinaryIO[c.TypeOID] {
			return false
		}
	}
	return true
}

// RoundTripStage is the temp table that holds rows for m to evaluate:
// carried columns, then the source row at its bind types. Its rows vanish
// at commit, because a read-only transaction may fill a temp table but not
// truncate it; copy fills it in that column order.
func (m *Mapping) RoundTripStage(stage string, carry []Carried, binary bool) (ddl, copy string) {
	cols := make([]string, 0, len(carry)+len(m.Source))
	names := make([]string, 0, cap(cols))
	for _, c := range carry {
		cols = append(cols, quote(c.Name)+" "+c.Type)
		names = append(names, quote(c.Name))
	}
	for _, c := range m.Source {
		cols = append(cols, quote(c.Name)+" "+c.BindType)
		names = append(names, quote(c.Name))
	}
	return tempDDL(stage, cols), fmt.Sprintf("COPY %s (%s) FROM STDIN%s", quote(stage), strings.Join(names, ", "), copyFormat(binary))
}

// RoundTripResultDDL is the temp table that holds m's target rows: carried
// columns, then every writable target column at its full type, so storing
// a row applies the column's modifiers (length, scale) as the INSERT into
// the real table does. Columns m does not map stay NULL.
func (m *Mapping) RoundTripResultDDL(out string, carry []Carried) string {
	var cols []string
	for _, c := range carry {
		cols = append(cols, quote(c.Name)+" "+c.Type)
	}
	for _, c := range m.Target.Columns {
		if !c.Generated {
			cols = append(cols, quote(c.Name)+" "+c.FullType)
		}
	}
	return tempDDL(out, cols)
}

func tempDDL(name string, cols []string) string {
	return fmt.Sprintf("CREATE TEMP TABLE %s (%s) ON COMMIT DELETE ROWS", quote(name), strings.Join(cols, ", "))
}

// RoundTripProjectSQL evaluates m over the rows of stage exactly as the
// upsert does (each expression cast to its target column's type): the
// stage columns named in carry under CarryName(i), every mapped target
// column under its name, then PassColumn, whether the row passes the
// filter (NULL failing, as in WHERE; true without a filter).
func (m *Mapping) RoundTripProjectSQL(stage string, carry []string) string {
	cols := make([]string, 0, len(carry)+len(m.Columns)+1)
	for i, c := range carry {
		cols = append(cols, "s."+quote(c)+" AS "+CarryName(i))
	}
	for _, c := range m.Columns {
		cols = append(cols, fmt.Sprintf("(%s)::%s AS %s", c.Expr, c.Type, quote(c.Name)))
	}
	pass := "true"
	if m.Filter != "" {
		pass = fmt.Sprintf("COALESCE((%s), false)", m.Filter)
	}
	cols = append(cols, pass+" AS "+PassColumn)
	return fmt.Sprintf("SELECT %s FROM %s AS s", strings.Join(cols, ", "), quote(stage))
}

// RoundTripForwardSQL stores m's target rows for the staged rows that pass
// its filter in out (RoundTripResultDDL), the carried key first.
func (m *Mapping) RoundTripForwardSQL(stage, out string, carry []string) string {
	cols := make([]string, 0, len(carry)+len(m.Columns))
	for i := range carry {
		cols = append(cols, CarryName(i))
	}
	for _, c := range m.Columns {
		cols = append(cols, quote(c.Name))
	}
	list := strings.Join(cols, ", ")
	return fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM (%s) AS p WHERE p.%s",
		quote(out), list, list, m.RoundTripProjectSQL(stage, carry), PassColumn)
}

// RoundTripCopyOutSQL reads rows of m's source shape, with nCarry carried
// columns first, from the previous step's results in from, in the column
// order of RoundTripStage.
func (m *Mapping) RoundTripCopyOutSQL(from string, nCarry int, binary bool) string {
	cols := make([]string, 0, nCarry+len(m.Source))
	for i := range nCarry {
		cols = append(cols, CarryName(i))
	}
	for _, c := range m.Source {
		cols = append(cols, quote(c.Name))
	}
	return fmt.Sprintf("COPY (SELECT %s FROM %s) TO STDOUT%s", strings.Join(cols, ", "), quote(from), copyFormat(binary))
}

// SourceCopyOutSQL reads m's source rows from the source relation rel
// (quoted) aliased s, restricted by where (SQL over s, no parameters: COPY
// takes none), in the column order of RoundTripStage without carried
// columns.
func (m *Mapping) SourceCopyOutSQL(rel, where string, binary bool) string {
	cols := make([]string, len(m.Source))
	for i, c := range m.Source {
		cols[i] = "s." + quote(c.Name)
	}
	if where != "" {
		where = " WHERE " + where
	}
	return fmt.Sprintf("COPY (SELECT %s FROM %s AS s%s) TO STDOUT%s", strings.Join(cols, ", "), rel, where, copyFormat(binary))
}
