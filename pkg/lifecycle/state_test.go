package lifecycle_test

import (
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/checkpoint"
	"github.com/tandem-migrate/tandem/pkg/lifecycle"
)

// TestStateAndRecords keeps tandem's own records on a real server: the
// lifecycle row through every phase, the verify passes and the table
// activity the cutover's final check reads (names with quotes, commas and
// backslashes included, since they travel as an array literal).
func TestStateAndRecords(t *testing.T) {
	ctx := context.Background()
	c := pgcluster.ForTest(t, pgcluster.Options{Name: "lifecycle"})
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	st, err := lifecycle.Load(ctx, conn, "m")
	if err != nil || st.Phase != lifecycle.Forward || st.Attempt != 0 {
		t.Fatalf("before tandem's schema exists: %+v, %v", st, err)
	}
	if err := lifecycle.EnsureTable(ctx, conn); err != nil {
		t.Fatal(err)
	}
	fenced := time.Now().Add(-time.Second).Round(time.Microsecond)
	for _, tc := range []struct {
		phase    lifecycle.Phase
		reversed bool
	}{{lifecycle.CuttingOver, false}, {lifecycle.CutOver, true}, {lifecycle.RollingBack, true}, {lifecycle.Forward, false}} {
		want := lifecycle.State{Phase: tc.phase, Attempt: 2, FencedOld: tc.phase == lifecycle.CuttingOver, FencedNew: tc.phase == lifecycle.RollingBack,
			FencedAt: fenced, FenceLSN: change.LSN(0x16B3748), Unavailable: 420 * time.Millisecond,
			Steps: []lifecycle.Step{{Name: "fence", At: fenced, Took: 17 * time.Millisecond, Outcome: "ok"}}}
		if err := lifecycle.Save(ctx, conn, "m", &want); err != nil {
			t.Fatal(err)
		}
		got, err := lifecycle.Load(ctx, conn, "m")
		if err != nil {
			t.Fatal(err)
		}
		if got.Phase != want.Phase || got.Attempt != 2 || got.FencedOld != want.FencedOld || got.FencedNew != want.FencedNew ||
			!got.FencedAt.Equal(fenced) || got.FenceLSN != want.FenceLSN || got.Unavailable != want.Unavailable ||
			len(got.Steps) != 1 || got.Steps[0].Took != want.Steps[0].Took {
			t.Errorf("%s: saved %+v, loaded %+v", tc.phase, want, got)
		}
		if got.Phase.Reversed() != tc.reversed {
			t.Errorf("%s: Reversed() = %v", tc.phase, got.Phase.Reversed())
		}
	}
	if _, err := conn.Exec(ctx, `UPDATE tandem.lifecycle SET phase = 'teleported'`); err != nil {
		t.Fatal(err)
	}
	if _, err := lifecycle.Load(ctx, conn, "m"); err == nil || !strings.Contains(err.Error(), "teleported") {
		t.Errorf("an unknown phase must stop tandem, got %v", err)
	}
	if ok, err := lifecycle.Delete(ctx, conn, "m"); !ok || err != nil {
		t.Errorf("delete: %v %v", ok, err)
	}

	names := []string{`public.orders`, `odd."quoted"`, `a,b.c\d`, `s.{x}`}
	sql, params := checkpoint.ActivityStatement("m", names, 0x100)
	args := make([]any, len(params))
	for i, p := range params {
		args[i] = string(p)
	}
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("activity statement: %v", err)
	}
	act, err := checkpoint.LoadActivity(ctx, conn, "m")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for k, v := range act {
		if v != 0x100 {
			t.Errorf("%s at %s", k, v)
		}
		got = append(got, k)
	}
	sort.Strings(got)
	sort.Strings(names)
	if strings.Join(got, "|") != strings.Join(names, "|") {
		t.Errorf("activity recorded %q, want %q", got, names)
	}
	if err := checkpoint.SaveVerifyPass(ctx, conn, "m", "public.orders", checkpoint.Pass{Compared: 1000, Differing: 3, LSN: 0x200}); err != nil {
		t.Fatal(err)
	}
	passes, err := checkpoint.LoadVerifyPasses(ctx, conn, "m")
	if p := passes["public.orders"]; err != nil || p.Compared != 1000 || p.Differing != 3 || p.LSN != 0x200 || p.Ratio() != 0.003 {
		t.Errorf("verify pass: %+v %v", passes, err)
	}
}
