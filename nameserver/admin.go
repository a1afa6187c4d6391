package nameserver

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/replproxy/replproxy/internal/admin"
)

// NewAdminHandler serves the operator's endpoints, for a listener apart
// from DNS:
//
//	/metrics       Prometheus metrics from g
//	/healthz       200 while the process runs
//	/readyz        200 once srv answers and every cluster's store is open,
//	               notified and indexed; 503 otherwise, saying what is missing
//	/debug/pprof/  the runtime profiles
func NewAdminHandler(g prometheus.Gatherer, srv *Server, c *Clusters) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ready := srv == nil || srv.Serving()
		var lines []string
		if !ready {
			lines = append(lines, "dns: not answering")
		}
		if c != nil {
			for _, s := range c.Status() {
				state := "ready"
				switch {
				case !s.Open:
					state, ready = "store not open", false
				case !s.Synced:
					state, ready = "waiting for change notifications and the index", false
				case !s.Current:
					state = "ready (index being rebuilt)"
				}
				lines = append(lines, fmt.Sprintf("cluster %s: %s, %d repls indexed", s.Name, state, s.Indexed))
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
	})
	admin.HandlePprof(mux)
	return mux
}
