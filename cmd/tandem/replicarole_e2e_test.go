package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/tandem-migrate/tandem/internal/testkit"
)

// TestValidateReplicaRole: tandem writes the new database as a replica
// (session_replication_role), so validate must refuse a target role that
// may not set it, name the grant that fixes it, and list the foreign keys
// among mapped tables that would otherwise refuse rows; the grant alone
// makes it pass. With the role left at origin, those foreign keys are a
// refusal of their own.
func TestValidateReplicaRole(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	err := env.Target.Exec(ctx, "postgres", `
		ALTER TABLE marker ADD CONSTRAINT marker_order_fk FOREIGN KEY (id) REFERENCES orders_v2 (id) NOT VALID;
		CREATE ROLE app LOGIN;
		GRANT CREATE ON DATABASE postgres TO app;
		GRANT ALL ON ALL TABLES IN SCHEMA public TO app;`)
	if err != nil {
		t.Fatal(err)
	}
	appDSN := strings.Replace(env.TargetDSN, "://postgres@", "://app@", 1)
	if appDSN == env.TargetDSN {
		t.Fatalf("cannot derive the app role's DSN from %s", env.TargetDSN)
	}
	yaml := func(dsn, role string) string {
		cfg := env.YAML("rolecheck", "")
		cfg = strings.Replace(cfg, "retry_max: 1s}", "retry_max: 1s, session_replication_role: "+role+"}", 1)
		return strings.Replace(cfg, fmt.Sprintf("target: {dsn: %q}", env.TargetDSN), fmt.Sprintf("target: {dsn: %q}", dsn), 1)
	}

	res := tandemCmd(t, "validate", "--config", writeConfig(t, yaml(appDSN, "replica")))
	if res.code != 1 {
		t.Fatalf("validate with a target role that may not set session_replication_role: exit %d, want 1\nstdout: %s\nstderr: %s", res.code, res.stdout, res.stderr)
	}
	for _, want := range []string{"GRANT SET ON PARAMETER session_replication_role", "marker_order_fk on marker -> orders_v2"} {
		if !strings.Contains(res.stderr, want) {
			t.Errorf("validate's refusal should contain %q; stderr:\n%s", want, res.stderr)
		}
	}
	res = tandemCmd(t, "run", "--config", writeConfig(t, yaml(appDSN, "replica")))
	if res.code != 1 || !strings.Contains(res.stderr, "GRANT SET ON PARAMETER session_replication_role") {
		t.Fatalf("run with the same role: exit %d, want 1 with the grant named; stderr:\n%s", res.code, res.stderr)
	}
	var slots int
	if err := testkit.Connect(t, env.SourceDSN).QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots`).Scan(&slots); err != nil || slots != 0 {
		t.Fatalf("a refused run left %d slots on the old database (%v)", slots, err)
	}

	res = tandemCmd(t, "validate", "--config", writeConfig(t, yaml(appDSN, "origin")))
	if res.code != 1 || !strings.Contains(res.stderr, "apply.session_replication_role") || !strings.Contains(res.stderr, "marker_order_fk") {
		t.Fatalf("validate with origin and a foreign key among mapped tables: exit %d, want 1 naming the field and the key; stderr:\n%s", res.code, res.stderr)
	}

	if err := env.Target.Exec(ctx, "postgres", `GRANT SET ON PARAMETER session_replication_role TO app`); err != nil {
		t.Fatal(err)
	}
	res = tandemCmd(t, "validate", "--config", writeConfig(t, yaml(appDSN, "replica")))
	if res.code != 0 {
		t.Fatalf("validate after the grant: exit %d, want 0\nstderr: %s", res.code, res.stderr)
	}
}
