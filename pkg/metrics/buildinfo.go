package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandem-migrate/tandem/internal/version"
)

// newBuildInfo is tandem_build_info{version,commit,goversion} = 1: which
// build each migration runs, so a dashboard shows a rollout and an alert
// can be read against the code that raised it.
func newBuildInfo(info version.Info) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tandem_build_info",
		Help: "Always 1; the labels say which build of tandem is running.",
		ConstLabels: prometheus.Labels{
			"version": info.Version, "commit": info.Commit, "goversion": info.GoVersion,
		},
	})
	g.Set(1)
	return g
}
