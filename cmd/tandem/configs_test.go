package main

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/tandem-migrate/tandem/pkg/config"
)

// The shipped configs are documentation; these tests keep them true to the
// loader as config fields come and go.

func TestShippedConfigsLoad(t *testing.T) {
	for _, path := range []string{"../../configs/example.yaml", "../../configs/demo.yaml"} {
		t.Run(path, func(t *testing.T) {
			// The caller's overrides would change what is being checked.
			for _, kv := range os.Environ() {
				if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "TANDEM_") {
					t.Setenv(k, "") // viper treats empty as unset
				}
			}
			if _, err := loadConfig(path); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// notInExample are config fields example.yaml deliberately leaves out,
// with the reason given there.
var notInExample = map[string]bool{}

// TestExampleDocumentsEveryField fails when a config field is missing from
// configs/example.yaml, so a new knob cannot ship undocumented.
func TestExampleDocumentsEveryField(t *testing.T) {
	b, err := os.ReadFile("../../configs/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	var missing []string
	var walk func(prefix string, typ reflect.Type, node map[string]any)
	walk = func(prefix string, typ reflect.Type, node map[string]any) {
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			key := f.Tag.Get("mapstructure")
			// "-" marks fields derived from others, never configured.
			if key == "" || key == "-" || notInExample[prefix+key] {
				continue
			}
			child, ok := node[key]
			if !ok {
				missing = append(missing, prefix+key)
				continue
			}
			ft := f.Type
			if ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft.PkgPath() == reflect.TypeOf(config.Config{}).PkgPath() {
				walk(prefix+key+".", ft, merge(child))
			}
		}
	}
	walk("", reflect.TypeOf(config.Config{}), map[string]any(doc))
	if len(missing) > 0 {
		t.Errorf("configs/example.yaml does not show these fields (document them there): %s", strings.Join(missing, ", "))
	}
}

// merge turns a list of mappings (tables:) into one mapping holding every
// key used by any entry, so a field counts as shown if one entry shows it.
func merge(node any) map[string]any {
	switch n := node.(type) {
	case map[string]any:
		return n
	case []any:
		out := map[string]any{}
		for _, e := range n {
			if m, ok := e.(map[string]any); ok {
				for k, v := range m {
					out[k] = v
				}
			}
		}
		return out
	}
	return nil
}
