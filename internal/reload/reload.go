// Package reload is what both daemons share to reload their configuration
// without a restart: the reload metrics, the loop that runs a reload on
// each trigger (SIGHUP for the binaries, a channel in-process).
package reload

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Metrics count reloads: <prefix>_reload_total{result="ok|error"}, and
// <prefix>_config_last_reload_successful (1 or 0) and
// <prefix>_config_last_reload_success_timestamp_seconds, as Prometheus
// names its own.
type Metrics struct {
	ok, failed  prometheus.Counter
	successful  prometheus.Gauge
	lastSuccess prometheus.Gauge
}

// NewMetrics registers the metrics with reg (nil: not registered), named
// with prefix ("replproxy", "replns"); the start counts as the first
// successful load.
func NewMetrics(reg prometheus.Registerer, prefix string, now time.Time) *Metrics {
	total := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: prefix + "_reload_total",
		Help: "Configuration reloads (SIGHUP), by result: ok (everything reloaded), error (nothing changed: the configuration in use is kept).",
	}, []string{"result"})
	m := &Metrics{
		ok:     total.WithLabelValues("ok"),
		failed: total.WithLabelValues("error"),
		successful: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: prefix + "_config_last_reload_successful",
			Help: "1 when the last reload (or the start) loaded every file, 0 when it was refused.",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: prefix + "_config_last_reload_success_timestamp_seconds",
			Help: "When the configuration in use was loaded (the start or the last successful reload), in Unix seconds.",
		}),
	}
	m.successful.Set(1)
	m.lastSuccess.Set(float64(now.UnixNano()) / 1e9)
	if reg != nil {
		reg.MustRegister(total, m.successful, m.lastSuccess)
	}
	return m
}

// Observe counts one reload that ended with err (nil: it succeeded) at
// now.
func (m *Metrics) Observe(err error, now time.Time) {
	if err != nil {
		m.failed.Inc()
		m.successful.Set(0)
		return
	}
	m.ok.Inc()
	m.successful.Set(1)
	m.lastSuccess.Set(float64(now.UnixNano()) / 1e9)
}

// Loop reloads once for each value from trigger until ctx ends or trigger
// is closed: it calls apply, counts the result in m, and logs a refused
// reload (the configuration in use keeps serving). A nil trigger never
// fires: Loop waits for ctx.
func Loop(ctx context.Context, trigger <-chan struct{}, apply func() error, m *Metrics, logger *zap.Logger) {
	reload := func() {
		err := apply()
		m.Observe(err, time.Now())
		if err != nil {
			logger.Error("reload refused; the configuration in use keeps serving", zap.Error(err))
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-trigger:
			if !ok {
				<-ctx.Done()
				return
			}
			reload()
		}
	}
}
