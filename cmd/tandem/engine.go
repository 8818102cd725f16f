package main

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/lifecycle"
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
	// reverse streams new -> old once the migration is cut over; follow
	// starts and stops it as the phase changes.
	reverse *pipeline.Pipeline
	follow  *lifecycle.Follower
	shadow  *verify.Shadow // nil unless verify.continuous
}

// newEngine builds the daemon's parts and registers their metrics; it
// connects to nothing.
func newEngine(cfg *config.Config, log *slog.Logger) (*engine, error) {
	reg := metrics.NewRegistry()
	// Both directions export the same series, told apart by direction.
	fwdReg := prometheus.WrapRegistererWith(prometheus.Labels{"direction": "forward"}, reg)
	revReg := prometheus.WrapRegistererWith(prometheus.Labels{"direction": "reverse"}, reg)
	e := &engine{reg: reg, pipeline: pipeline.New(cfg, log, fwdReg)}
	revLog := log.With("direction", "reverse")
	e.reverse = pipeline.New(pipeline.ReverseBase(cfg), revLog, revReg)
	e.follow = lifecycle.NewFollower(cfg, e.reverse, lifecycle.NewMetrics(reg), log.With("component", "lifecycle"))
	if cfg.Verify.Continuous {
		s, err := verify.NewShadow(cfg, verify.OptionsFromConfig(cfg), reg, log.With("component", "shadow-verify"))
		if err != nil {
			return nil, err
		}
		e.shadow = s
	}
	return e, nil
}
