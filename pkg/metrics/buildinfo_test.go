package metrics

import (
	"testing"

	"github.com/tandem-migrate/tandem/internal/version"
)

// TestBuildInfo: the daemon's registry carries tandem_build_info = 1 with
// this binary's version, commit and Go version.
func TestBuildInfo(t *testing.T) {
	families, err := NewRegistry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := version.Get()
	for _, f := range families {
		if f.GetName() != "tandem_build_info" {
			continue
		}
		if n := len(f.GetMetric()); n != 1 {
			t.Fatalf("%d tandem_build_info series, want 1", n)
		}
		m := f.GetMetric()[0]
		if v := m.GetGauge().GetValue(); v != 1 {
			t.Errorf("tandem_build_info = %v, want 1", v)
		}
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for name, value := range map[string]string{"version": want.Version, "commit": want.Commit, "goversion": want.GoVersion} {
			if got[name] != value {
				t.Errorf("label %s = %q, want %q", name, got[name], value)
			}
		}
		if len(got) != 3 {
			t.Errorf("labels %v, want exactly version, commit, goversion", got)
		}
		return
	}
	t.Fatal("tandem_build_info is not on the registry")
}
