package main

import (
	"strings"

	"github.com/spf13/cobra"
)

// The --help pages: what each command does, examples, the environment
// variables that apply and the exit codes. Kept apart from the commands so
// main.go stays about behaviour; help_test.go checks every command has them.

// controlEnvKeys are the settings the backfill commands read (see
// loadControlConfig): enough to find the daemon.
var controlEnvKeys = []string{"name", "source.slot", "control.socket", "control.listen", "control.token_file"}

// envHelp lists the variables a command honours: TANDEM_ overrides of
// keys and, for commands that connect to the databases, libpq's.
func envHelp(keys []string, databases bool) string {
	var names []string
	for _, k := range keys {
		names = append(names, "TANDEM_"+strings.ToUpper(strings.ReplaceAll(k, ".", "_")))
	}
	s := `Environment:
  ` + wrap(strings.Join(names, ", "), 76, "  ") + `
      override the config field of the same path`
	if !databases {
		return s + " (TANDEM_CONTROL_SOCKET\n      is control.socket)."
	}
	return s + " (TANDEM_SOURCE_DSN is\n      source.dsn)" + `; keep DSNs with passwords here rather than in the file.
  PGPASSWORD, PGPASSFILE (default ~/.pgpass), PGSSLMODE and the other libpq
  PG* variables
      fill in what a DSN leaves out. Under systemd's ProtectHome=yes
      ~/.pgpass is not readable: set PGPASSFILE (deploy/README.md).`
}

type helpPage struct{ long, example string }

var helpPages = map[string]helpPage{
	"tandem": {
		long: `tandem moves a PostgreSQL database to a new schema without downtime: it
copies the existing rows (backfill) and streams every committed change
from the old database's WAL into the new schema, transformed by the SQL
expressions of a config file, until you cut over.

A migration goes: validate, run (as a service), status and verify while
it runs, cut over, teardown. Every command takes --config, the migration's
YAML file (configs/example.yaml documents every field).`,
		example: `  tandem validate --config orders_v2.yaml
  tandem run --config orders_v2.yaml
  tandem status --watch --config orders_v2.yaml
  tandem backfill pause --config orders_v2.yaml
  tandem verify --config orders_v2.yaml
  tandem teardown --config orders_v2.yaml`,
	},
	"tandem run": {
		long: `Run the migration until stopped: create the replication slot and the
publication if missing, copy the existing rows in chunks (backfill) while
streaming every change, and apply both to the new schema exactly once.
A restart resumes from the checkpoint; lost connections are retried with
backoff (apply.retry_min, apply.retry_max) from the checkpoint.

It first checks what validate checks and writes nothing if that fails.
It serves /metrics and /healthz on metrics.listen, and the backfill
controls (tandem backfill) on control.socket (mode 0600) and optionally
control.listen (bearer token).

Signals:
  SIGTERM, SIGINT  commit the source transactions that are complete (within
                   apply.shutdown_timeout) and exit 0
  SIGHUP           re-read the config file and apply its backfill limits
                   (chunk_rows, chunk_bytes, rows_per_second,
                   bytes_per_second); other changes need a restart`,
		example: `  tandem run --config /etc/tandem/orders_v2.yaml
  TANDEM_SOURCE_DSN='postgres://tandem:...@old-db/shop' TANDEM_TARGET_DSN='postgres://tandem:...@new-db/shop' \
    tandem run --config orders_v2.yaml
  systemctl reload tandem@orders_v2     # SIGHUP: new backfill limits from the file`,
	},
	"tandem validate": {
		long: `Check the config against both databases, writing nothing: wal_level =
logical, replication privilege, a free slot, every table and column, and
every expression type-checked by the new database. Each problem is named
with its config field and the fix; notes say what was found (partitions,
generated columns, the replica role).`,
		example: `  tandem validate --config orders_v2.yaml
  set -a; . /etc/tandem/orders_v2.env; set +a; tandem validate --config /etc/tandem/orders_v2.yaml`,
	},
	"tandem status": {
		long: `Show the migration's state, read from both databases: the slot (active
or not, WAL it keeps), the checkpoint and how far it is behind the old
database in bytes, the replication lag in seconds (from the running
tandem's metrics endpoint, metrics.listen, when it answers), and each
table's copy: rows, percent of the estimate, rate and ETA.

--watch redraws it every --interval (2s) until Ctrl-C; --count stops after
that many frames. A frame that cannot be read shows the error and the
watch goes on.`,
		example: `  tandem status --config orders_v2.yaml
  tandem status --watch --config orders_v2.yaml
  tandem status --watch --interval 10s --count 6 --json --config orders_v2.yaml >> status.ndjson`,
	},
	"tandem verify": {
		long: `Compare the new tables with the transformed old ones in checksummed key
ranges, without moving the rows: ranges that differ are narrowed down to
the rows and columns, which the report names. While tandem streams (--live
auto), rows still in flight are re-checked once the stream has passed them
instead of being reported.`,
		example: `  tandem verify --config orders_v2.yaml
  tandem verify --table public.orders --json --config orders_v2.yaml`,
	},
	"tandem teardown": {
		long: `Drop the replication slot (which otherwise keeps WAL on the old database
forever), the publication and tandem's checkpoint on the new database:
after cutover, or to abandon a migration. Stop tandem run first: teardown
refuses while a connection holds the slot (--force terminates it, for a
host that is gone for good).`,
		example: `  systemctl stop tandem@orders_v2 && tandem teardown --config /etc/tandem/orders_v2.yaml
  tandem teardown --keep-checkpoint --config orders_v2.yaml`,
	},
	"tandem version": {
		long: `Print the version, commit, build date and Go version of this binary (also exported as tandem_build_info).`,
		example: `  tandem version
  tandem version --json`,
	},
	"tandem backfill": {
		long: `Change the copy of a running tandem run without restarting it, through
its control surface: the unix socket control.socket (mode 0600, so run
these as the user tandem runs as, or root), found from --config, or
control.listen with the token in control.token_file (--addr).

Changes last until tandem restarts or reloads (SIGHUP), which go back to
the config file's limits; a pause survives a SIGHUP. The metrics listener
serves no controls.`,
		example: `  tandem backfill show --config /etc/tandem/orders_v2.yaml
  sudo -u tandem tandem backfill pause --config /etc/tandem/orders_v2.yaml
  tandem backfill set --rows-per-second 5000 --chunk-rows 10000 --config orders_v2.yaml
  tandem backfill resume --addr 127.0.0.1:9188 --config orders_v2.yaml   # control.listen, e.g. through kubectl port-forward`,
	},
	"tandem backfill show": {
		long:    `Print the running copy's limits and whether it is held back (paused, or which throttle signal holds it).`,
		example: `  tandem backfill show --config orders_v2.yaml`,
	},
	"tandem backfill pause": {
		long: `Pause the copy. The stream goes on; chunks already read are still
applied. The pause lasts until resume or a restart.`,
		example: `  tandem backfill pause --config orders_v2.yaml`,
	},
	"tandem backfill resume": {
		long:    `Resume a paused copy. Throttle signals (backfill.max_lag, max_active_backends, throttle_query) may still hold it back.`,
		example: `  tandem backfill resume --config orders_v2.yaml`,
	},
	"tandem backfill set": {
		long: `Change the running copy's chunk size and rate caps. Only the flags given
change; rate 0 removes a cap. Lasts until a restart or SIGHUP (edit the
config file to keep it).`,
		example: `  tandem backfill set --rows-per-second 2000 --config orders_v2.yaml
  tandem backfill set --rows-per-second 0 --bytes-per-second 0 --config orders_v2.yaml   # no caps
  tandem backfill set --chunk-rows 5000 --chunk-bytes 8388608 --config orders_v2.yaml`,
	},
}

var exitCodes = map[string]string{
	"tandem":          "\n  0  success\n  1  failure (each command's --help says more)",
	"tandem run":      "\n  0  stopped by SIGTERM or SIGINT\n  1  the config does not load (the message names the field), preflight failed (nothing was written),\n     or an error a retry cannot fix (a row the new schema refuses, a lost slot)",
	"tandem validate": "\n  0  ready: run would start" + "\n  1  a problem was found (each is named), or the config does not load",
	"tandem status":   "\n  0  shown (with --watch: stopped by Ctrl-C or after --count)\n  1  the config does not load, or a database cannot be read (with --watch: the last frame failed)",
	"tandem verify":   "\n  0  equal\n  1  the new schema differs (the report names rows and columns)\n  2  could not check (config, connection, a query failed)",
	"tandem teardown": "\n  0  dropped (or there was nothing to drop)\n  1  the config does not load, a database cannot be reached, or a running tandem still holds the slot",
	"tandem version":  "\n  0  always",
	"tandem backfill": "\n  0  the daemon answered and applied the change\n  1  no daemon found or reachable, it refused the values, or the flags are wrong",
}

// applyHelp sets Long and Example on every command from helpPages.
func applyHelp(root *cobra.Command) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		path := c.CommandPath()
		if p, ok := helpPages[path]; ok {
			codes, ok := exitCodes[path]
			if !ok {
				codes = exitCodes[c.Parent().CommandPath()]
			}
			c.Long = p.long + "\n\nExit codes:" + codes
			switch {
			case path == "tandem version":
			case strings.HasPrefix(path, "tandem backfill"):
				c.Long += "\n\n" + envHelp(controlEnvKeys, false)
			default:
				c.Long += "\n\n" + envHelp(envKeys, true)
			}
			c.Example = p.example
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

func wrap(s string, width int, indent string) string {
	var b strings.Builder
	line := 0
	for i, w := range strings.Fields(s) {
		if i > 0 && line+1+len(w) > width {
			b.WriteString("\n" + indent)
			line = 0
		} else if i > 0 {
			b.WriteByte(' ')
			line++
		}
		b.WriteString(w)
		line += len(w)
	}
	return b.String()
}
