package main

import "strings"

// passwordHint is added to an error whose text shows that a server
// refused the password. The connection errors themselves name host, port
// and user; the password is wrong or missing, or was read from a place
// tandem cannot see: under systemd's ProtectHome=yes, ~/.pgpass is
// hidden (deploy/README.md). The password itself is never printed.
func passwordHint(msg string) string {
	if !strings.Contains(msg, "SQLSTATE 28P01") && !strings.Contains(msg, "password authentication failed") {
		return ""
	}
	return "hint: the server refused the password. Check the password in source.dsn / target.dsn (or TANDEM_SOURCE_DSN / TANDEM_TARGET_DSN), " +
		"PGPASSWORD, or the password file: PGPASSFILE names it (default ~/.pgpass, which a unit with ProtectHome=yes cannot read; see deploy/README.md)"
}
