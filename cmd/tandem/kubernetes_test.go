package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The Kubernetes manifests cannot be applied here; this test checks what
// would otherwise only show on a cluster: the safety settings of the
// Deployment, that its parts refer to one another by the right names and
// ports, and that the config in the ConfigMap loads.

const k8sDir = "../../deploy/kubernetes"

// manifest is one parsed Kubernetes object.
type manifest = map[string]any

func readManifest(t *testing.T, name string) manifest {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(k8sDir, name))
	if err != nil {
		t.Fatal(err)
	}
	var m manifest
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return m
}

// get walks maps by key and lists by index; nil when the path is absent.
func get(node any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := node.(map[string]any)
			if !ok {
				return nil
			}
			node = m[k]
		case int:
			l, ok := node.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			node = l[k]
		}
	}
	return node
}

// list is the list at path, or a test failure.
func list(t *testing.T, node any, path ...any) []any {
	t.Helper()
	l, ok := get(node, path...).([]any)
	if !ok {
		t.Fatalf("no list at %v", path)
	}
	return l
}

func str(node any, path ...any) string {
	return fmt.Sprint(get(node, path...))
}

func TestKubernetesManifests(t *testing.T) {
	kust := readManifest(t, "kustomization.yaml")
	resources := map[string]bool{}
	for _, r := range list(t, kust, "resources") {
		resources[fmt.Sprint(r)] = true
		if _, err := os.Stat(filepath.Join(k8sDir, fmt.Sprint(r))); err != nil {
			t.Errorf("kustomization.yaml lists %s: %v", r, err)
		}
	}
	if resources["secret.example.yaml"] {
		t.Error("kustomization.yaml applies secret.example.yaml: its placeholder passwords would overwrite the real Secret")
	}

	dep := readManifest(t, "deployment.yaml")
	cm := readManifest(t, "configmap.yaml")
	svc := readManifest(t, "service.yaml")
	secret := readManifest(t, "secret.example.yaml")
	pod := get(dep, "spec", "template", "spec")
	c := get(pod, "containers", 0)

	// Two tandems for one migration must never run, not even during a rollout.
	if got := str(dep, "spec", "replicas"); got != "1" {
		t.Errorf("deployment: replicas %s, want 1", got)
	}
	if got := str(dep, "spec", "strategy", "type"); got != "Recreate" {
		t.Errorf("deployment: strategy %s, want Recreate", got)
	}
	// /healthz is 503 while tandem retries an outage by itself: liveness on
	// it would restart tandem in the middle of recovering.
	if got := str(c, "livenessProbe", "httpGet", "path"); got != "/livez" {
		t.Errorf("deployment: liveness probe path %s, want /livez", got)
	}
	if got := str(c, "livenessProbe", "httpGet", "port"); got != "metrics" {
		t.Errorf("deployment: liveness probe port %s, want the port named metrics", got)
	}
	if got := str(c, "readinessProbe", "httpGet", "path"); got != "/healthz" {
		t.Errorf("deployment: readiness probe path %s, want /healthz", got)
	}
	if got := str(c, "readinessProbe", "httpGet", "port"); got != "metrics" {
		t.Errorf("deployment: readiness probe port %s, want the port named metrics", got)
	}
	if got := str(get(pod, "securityContext"), "runAsUser"); got != "65532" {
		t.Errorf("deployment: runAsUser %s, want 65532 (the image's user)", got)
	}

	// The DSNs come from the Secret, by names the Secret has.
	for _, env := range []string{"TANDEM_SOURCE_DSN", "TANDEM_TARGET_DSN"} {
		ref := envSecretRef(c, env)
		if ref == nil {
			t.Errorf("deployment: %s is not set from a Secret", env)
			continue
		}
		if name := str(ref, "name"); name != str(secret, "metadata", "name") {
			t.Errorf("deployment: %s from Secret %s, but secret.example.yaml is %s", env, name, str(secret, "metadata", "name"))
		}
		if get(secret, "stringData", str(ref, "key")) == nil {
			t.Errorf("deployment: %s from key %s, which secret.example.yaml does not have", env, str(ref, "key"))
		}
	}

	// The config file is the ConfigMap's key, mounted where --config points.
	args := list(t, c, "args")
	cfgFile := ""
	for i, a := range args {
		if a == "--config" && i+1 < len(args) {
			cfgFile = fmt.Sprint(args[i+1])
		}
	}
	mount := get(c, "volumeMounts", 0)
	if filepath.Dir(cfgFile) != str(mount, "mountPath") {
		t.Errorf("deployment: --config %s is not under the config mount %s", cfgFile, str(mount, "mountPath"))
	}
	if got := str(pod, "volumes", 0, "configMap", "name"); got != str(cm, "metadata", "name") {
		t.Errorf("deployment: mounts ConfigMap %s, but configmap.yaml is %s", got, str(cm, "metadata", "name"))
	}
	yamlText, _ := get(cm, "data", filepath.Base(cfgFile)).(string)
	if yamlText == "" {
		t.Fatalf("configmap.yaml has no key %s for --config %s", filepath.Base(cfgFile), cfgFile)
	}

	// That config loads, with the DSNs from the environment as in the pod.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "TANDEM_") {
			t.Setenv(k, "")
		}
	}
	t.Setenv("TANDEM_SOURCE_DSN", "postgres://tandem@old-db:5432/shop")
	t.Setenv("TANDEM_TARGET_DSN", "postgres://tandem@new-db:5432/shop")
	path := filepath.Join(t.TempDir(), filepath.Base(cfgFile))
	if err := os.WriteFile(path, []byte(yamlText), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatalf("configmap.yaml's %s does not load: %v", filepath.Base(cfgFile), err)
	}

	// Ports: metrics.listen is the container's metrics port, which the
	// Service targets.
	_, port, err := net.SplitHostPort(cfg.Metrics.Listen)
	if err != nil {
		t.Fatalf("configmap: metrics.listen %q: %v", cfg.Metrics.Listen, err)
	}
	if host, _, _ := net.SplitHostPort(cfg.Metrics.Listen); host == "127.0.0.1" || host == "localhost" {
		t.Errorf("configmap: metrics.listen %s is not reachable by the kubelet or Prometheus", cfg.Metrics.Listen)
	}
	if str(c, "ports", 0, "name") != "metrics" || str(c, "ports", 0, "containerPort") != port {
		t.Errorf("deployment: container port %s %s, want metrics %s (metrics.listen)", str(c, "ports", 0, "name"), str(c, "ports", 0, "containerPort"), port)
	}
	if got := str(svc, "spec", "ports", 0, "targetPort"); got != "metrics" {
		t.Errorf("service: targetPort %s, want metrics", got)
	}
	if got := str(svc, "spec", "publishNotReadyAddresses"); got != "true" {
		t.Errorf("service: publishNotReadyAddresses %s; a tandem that is not streaming must still be scraped", got)
	}
	selector, _ := get(svc, "spec", "selector").(map[string]any)
	if len(selector) == 0 {
		t.Error("service: no selector")
	}
	for k, v := range selector {
		if str(dep, "spec", "template", "metadata", "labels", k) != fmt.Sprint(v) {
			t.Errorf("service: selector %s=%v does not match the pod's labels", k, v)
		}
	}

	// SIGTERM gets tandem's own shutdown_timeout before the SIGKILL.
	grace, _ := strconv.Atoi(str(pod, "terminationGracePeriodSeconds"))
	if time.Duration(grace)*time.Second <= cfg.Apply.ShutdownTimeout {
		t.Errorf("deployment: terminationGracePeriodSeconds %d is not above apply.shutdown_timeout %s", grace, cfg.Apply.ShutdownTimeout)
	}
}

// envSecretRef returns the secretKeyRef an env variable is set from.
func envSecretRef(container any, name string) any {
	envs, _ := get(container, "env").([]any)
	for _, e := range envs {
		if str(e, "name") == name {
			return get(e, "valueFrom", "secretKeyRef")
		}
	}
	return nil
}
