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
//	/readyz        200 once srv answers and at least one cluster's store is
//	               open, notified and indexed (a cluster that cannot be
//	               reached must not take the others' answers out of a load
//	               balancer); 503 otherwise. The body says each cluster's state.
//	/readyz?all=1  the strict view: 200 only when every cluster is ready
//	/debug/pprof/  the runtime profiles
func NewAdminHandler(g prometheus.Gatherer, srv *Server, c *Clusters) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		all := r.URL.Query().Get("all") == "1"
		ready := srv == nil || srv.Serving()
		var lines []string
		if !ready {
			lines = append(lines, "dns: not answering")
		}
		if c != nil {
			serving, total := 0, 0
			for _, s := range c.Status() {
				total++
				state := "ready"
				switch {
				case !s.Open:
					state = "store not open"
				case !s.Synced:
					state = "waiting for change notifications and the index"
				case !s.Current:
					state = "ready (index being rebuilt)"
				}
				if s.Open && s.Synced {
					serving++
				}
				lines = append(lines, fmt.Sprintf("cluster %s: %s, %d repls indexed", s.Name, state, s.Indexed))
			}
			if serving == 0 || all && serving < total {
				ready = false
			}
			lines = append(lines, fmt.Sprintf("%d of %d clusters ready", serving, total))
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
