package main

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/metrics"
	"github.com/tandem-migrate/tandem/pkg/pipeline"
	"github.com/tandem-migrate/tandem/pkg/verify"
)

// engine is what `tandem run` runs and serves: the pipeline, the shadow
// verifier when verify.continuous is on, and the one registry that holds
// every metric they export. deploy_test.go checks the Grafana dashboard
// and the alert rules against a registry built here, so what they query
// is what a running tandem defines.
type engine struct {
	reg      *prometheus.Registry
	pipeline *pipeline.Pipeline
	shadow   *verify.Shadow // nil unless verify.continuous
}

// newEngine builds the daemon's parts and registers their metrics; it
// connects to nothing.
func newEngine(cfg *config.Config, log *slog.Logger) (*engine, error) {
	reg := metrics.NewRegistry()
	e := &engine{reg: reg, pipeline: pipeline.New(cfg, log, reg)}
	if cfg.Verify.Continuous {
		s, err := verify.NewShadow(cfg, verify.OptionsFromConfig(cfg), reg, log.With("component", "shadow-verify"))
		if err != nil {
			return nil, err
		}
		e.shadow = s
	}
	return e, nil
}
