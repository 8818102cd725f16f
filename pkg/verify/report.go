package verify

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Kind says how a row differs.
type Kind string

const (
	// Different: the key is on both sides with other values.
	Different Kind = "different"
	// Missing: the source row (passing the filter) is not in the target.
	Missing Kind = "missing"
	// Extra: the target row has no source row (or its source row fails the
	// filter).
	Extra Kind = "extra"
)

// Exit codes for the CLI.
const (
	ExitEqual    = 0
	ExitDiffers  = 1
	ExitNotCheck = 2
)

// Report is the result of one verification.
type Report struct {
	Name      string        `json:"name"`
	Live      bool          `json:"live"`
	StartedAt time.Time     `json:"started_at"`
	Seconds   float64       `json:"seconds"`
	Tables    []TableReport `json:"tables"`
	// Error is set when the verification as a whole could not run (bad
	// table filter, no connection); per-table problems are in Tables.
	Error string `json:"error,omitempty"`
}

// TableReport is the result for one table mapping. Compared = Equal +
// Different + Missing + Extra: every key seen on either side once.
type TableReport struct {
	Source string `json:"source"`
	Target string `json:"target"`
	// Mode is "range" (chunked by key ranges, checksums inside each
	// database) or "keys" (the target key is computed, so every row's key
	// and hash is read and matched in memory).
	Mode      string `json:"mode"`
	Compared  int64  `json:"compared"`
	Equal     int64  `json:"equal"`
	Different int64  `json:"different"`
	Missing   int64  `json:"missing"`
	Extra     int64  `json:"extra"`
	Chunks    int64  `json:"chunks"`
	// Rechecked counts rows that differed when first read and were read
	// again after the stream caught up (live mode): the in-flight volume.
	Rechecked int64   `json:"rechecked,omitempty"`
	Seconds   float64 `json:"seconds"`
	// Truncated is set when so many rows differed that the pass stopped
	// early: the counts are then a lower bound.
	Truncated bool `json:"truncated,omitempty"`
	// Examples holds the first few differing rows of each kind.
	Examples []Diff `json:"examples,omitempty"`
	// Error is set when the table could not be checked.
	Error string `json:"error,omitempty"`
}

// Diff is one differing row.
type Diff struct {
	Kind Kind `json:"kind"`
	// Key is every target key column with its value (canonical text).
	Key []KeyValue `json:"key"`
	// Columns names the differing target columns (Kind Different only).
	Columns []string `json:"columns,omitempty"`
}

// KeyValue is one key column's value; Value is nil for NULL (a source row
// whose key is NULL, which the target cannot hold).
type KeyValue struct {
	Column string  `json:"column"`
	Value  *string `json:"value"`
}

// Diffs is the number of rows that differ in any way.
func (t *TableReport) Diffs() int64 { return t.Different + t.Missing + t.Extra }

// OK reports whether the table was checked and found equal.
func (t *TableReport) OK() bool { return t.Error == "" && t.Diffs() == 0 }

// OK reports whether every table was checked and found equal.
func (r *Report) OK() bool {
	if r.Error != "" {
		return false
	}
	for i := range r.Tables {
		if !r.Tables[i].OK() {
			return false
		}
	}
	return true
}

// ExitCode is 0 when everything is equal, 2 when some table could not be
// checked, else 1.
func (r *Report) ExitCode() int {
	if r.Error != "" {
		return ExitNotCheck
	}
	code := ExitEqual
	for i := range r.Tables {
		switch {
		case r.Tables[i].Error != "":
			return ExitNotCheck
		case r.Tables[i].Diffs() > 0:
			code = ExitDiffers
		}
	}
	return code
}

// KeyString renders the key as col=value pairs joined by commas, e.g.
// "tenant_id=7,order_no=1042": every key column, so a line can be grepped
// for and pasted into a WHERE clause by hand.
func (d Diff) KeyString() string {
	parts := make([]string, len(d.Key))
	for i, kv := range d.Key {
		parts[i] = displayName(kv.Column) + "=" + displayValue(kv.Value)
	}
	return strings.Join(parts, ",")
}

// String is one greppable line: kind, key, differing columns.
func (d Diff) String() string {
	s := string(d.Kind) + " " + d.KeyString()
	if len(d.Columns) > 0 {
		s += " columns=" + strings.Join(d.Columns, ",")
	}
	return s
}

func displayName(n string) string {
	if simpleIdent.MatchString(n) {
		return n
	}
	return `"` + strings.ReplaceAll(n, `"`, `""`) + `"`
}

// displayValue quotes a value SQL-style only when it would be ambiguous
// bare: empty, the word NULL, or containing separators, quotes or spaces.
func displayValue(v *string) string {
	if v == nil {
		return "NULL"
	}
	s := *v
	if s != "" && s != "NULL" && !strings.ContainsAny(s, " \t\r\n,='\"\\") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes a table of counts, then one line per example, then the
// verdict.
func (r *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tTARGET\tMODE\tCOMPARED\tEQUAL\tDIFFERENT\tMISSING\tEXTRA\tSECONDS\tSTATUS")
	for i := range r.Tables {
		t := &r.Tables[i]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%.1f\t%s\n",
			t.Source, t.Target, t.Mode, t.Compared, t.Equal, t.Different, t.Missing, t.Extra, t.Seconds, t.status())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for i := range r.Tables {
		r.Tables[i].writeDetails(w)
	}
	_, err := fmt.Fprintf(w, "\nresult: %s\n", r.verdict())
	return err
}

func (t *TableReport) status() string {
	switch {
	case t.Error != "":
		return "NOT CHECKED"
	case t.Diffs() > 0:
		return "DIFFERS"
	}
	return "OK"
}

func (t *TableReport) writeDetails(w io.Writer) {
	if t.Error != "" {
		fmt.Fprintf(w, "\n%s: could not check: %s\n", t.Target, t.Error)
		return
	}
	if len(t.Examples) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%s (from %s):\n", t.Target, t.Source)
	if t.Truncated {
		fmt.Fprintf(w, "  (stopped early: too many differences; counts are a lower bound)\n")
	}
	shown := map[Kind]int64{}
	for _, d := range t.Examples {
		fmt.Fprintf(w, "  %s %s\n", t.Target, d)
		shown[d.Kind]++
	}
	for _, k := range []struct {
		kind  Kind
		total int64
	}{{Different, t.Different}, {Missing, t.Missing}, {Extra, t.Extra}} {
		if more := k.total - shown[k.kind]; more > 0 {
			fmt.Fprintf(w, "  ... and %d more %s\n", more, k.kind)
		}
	}
}

func (r *Report) verdict() string {
	if r.Error != "" {
		return "NOT CHECKED (" + r.Error + ")"
	}
	var differs, unchecked int
	for i := range r.Tables {
		switch r.Tables[i].status() {
		case "DIFFERS":
			differs++
		case "NOT CHECKED":
			unchecked++
		}
	}
	switch {
	case unchecked > 0:
		return fmt.Sprintf("NOT CHECKED (%d of %d tables could not be checked, %d differ)", unchecked, len(r.Tables), differs)
	case differs > 0:
		return fmt.Sprintf("DIFFERS (%d of %d tables)", differs, len(r.Tables))
	}
	return fmt.Sprintf("OK (%d tables equal)", len(r.Tables))
}
