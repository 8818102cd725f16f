package transform

import (
	"strings"
	"unicode"
)

// References returns the identifiers a SQL expression mentions, in the form
// PostgreSQL resolves them: unquoted names folded to lower case, quoted names
// as written. String literals, dollar-quoted strings and comments are
// skipped. The result over-approximates column references (a function named
// like a column counts too); callers only use it to decide what an
// expression may depend on, where over-approximation is the safe side.
func References(expr string) []string {
	var out []string
	seen := map[string]bool{}
	add := func(s string) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	r := []rune(expr)
	n := len(r)
	for i := 0; i < n; {
		c := r[i]
		switch {
		case c == '-' && i+1 < n && r[i+1] == '-':
			for i < n && r[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < n && r[i+1] == '*':
			depth := 0
			for i < n {
				if r[i] == '/' && i+1 < n && r[i+1] == '*' {
					depth++
					i += 2
					continue
				}
				if r[i] == '*' && i+1 < n && r[i+1] == '/' {
					depth--
					i += 2
					if depth == 0 {
						break
					}
					continue
				}
				i++
			}
		case c == '\'':
			// E'...' escapes were handled when the E was read as an identifier
			// start; here plain SQL strings with '' doubling.
			i = skipString(r, i, false)
		case c == '"':
			j := i + 1
			var b strings.Builder
			for j < n {
				if r[j] == '"' {
					if j+1 < n && r[j+1] == '"' {
						b.WriteRune('"')
						j += 2
						continue
					}
					break
				}
				b.WriteRune(r[j])
				j++
			}
			add(b.String())
			i = j + 1
		case c == '$':
			// $n parameter or $tag$ string.
			j := i + 1
			for j < n && (unicode.IsLetter(r[j]) || unicode.IsDigit(r[j]) || r[j] == '_') {
				j++
			}
			if j < n && r[j] == '$' {
				tag := string(r[i : j+1])
				end := strings.Index(string(r[j+1:]), tag)
				if end < 0 {
					return out
				}
				i = j + 1 + len([]rune(string(r[j+1:])[:end])) + len([]rune(tag))
			} else {
				i = j
			}
		case unicode.IsLetter(c) || c == '_':
			j := i
			for j < n && (unicode.IsLetter(r[j]) || unicode.IsDigit(r[j]) || r[j] == '_' || r[j] == '$') {
				j++
			}
			word := string(r[i:j])
			if (word == "E" || word == "e") && j < n && r[j] == '\'' {
				i = skipString(r, j, true)
				continue
			}
			if (word == "B" || word == "b" || word == "X" || word == "x" || word == "U&" || word == "n" || word == "N") && j < n && r[j] == '\'' {
				i = skipString(r, j, false)
				continue
			}
			add(strings.ToLower(word))
			i = j
		default:
			i++
		}
	}
	return out
}

func skipString(r []rune, i int, backslash bool) int {
	n := len(r)
	j := i + 1
	for j < n {
		if backslash && r[j] == '\\' {
			j += 2
			continue
		}
		if r[j] == '\'' {
			if j+1 < n && r[j+1] == '\'' {
				j += 2
				continue
			}
			return j + 1
		}
		j++
	}
	return n
}
