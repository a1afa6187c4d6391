package nameserver

import (
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/replproxy/replproxy/internal/admin"
	"github.com/replproxy/replproxy/store/routecache"
)

// NewAdminHandler serves the operator's endpoints, for a listener apart
// from DNS:
//
//	/metrics       Prometheus metrics from g
//	/healthz       200 while the process runs
//	/readyz        200 once srv answers and at least one cluster is answered
//	               from its index (its store opened, notified and indexed
//	               once: a cluster that cannot be reached must not take the
//	               others' answers out of a load balancer, and a store that
//	               went down since keeps its index answering, serve-stale);
//	               503 otherwise. The body says each cluster's state.
//	/readyz?all=1  the strict view: 200 only when every cluster is ready,
//	               its change feed up (ClusterStatus.Ready, but a cluster
//	               whose index is being rebuilt counts)
//	/debug/index/passed?cluster=NAME&xid=N[,N...]  when the cluster's name
//	               index applied a change (admin.IndexPassed)
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
			answering, strict, total := 0, 0, 0
			now := time.Now()
			for _, s := range c.Status() {
				total++
				state := "ready"
				switch {
				case !s.Open:
					state = "store not open" + since(now, s.FeedDownSince)
				case !s.Synced:
					state = "waiting for change notifications and the index" + since(now, s.FeedDownSince)
				case !s.FeedUp:
					state = "change feed down" + since(now, s.FeedDownSince) + ": answering from its index, changes not seen"
				case !s.Current:
					state = "ready (index being rebuilt)"
				}
				if s.Open && s.Synced {
					answering++
					if s.FeedUp {
						strict++
					}
				}
				lines = append(lines, fmt.Sprintf("cluster %s: %s, %d repls indexed", s.Name, state, s.Indexed))
			}
			if answering == 0 || all && strict < total {
				ready = false
			}
			summary := fmt.Sprintf("%d of %d clusters ready", strict, total)
			if answering > strict {
				summary += fmt.Sprintf(", %d more answering from their index with the change feed down", answering-strict)
			}
			lines = append(lines, summary)
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
	admin.HandleIndexPassed(mux, func(name string) (string, *routecache.Index) {
		if c == nil {
			return name, nil
		}
		for n, cache := range c.caches() {
			if n == name && cache != nil {
				return n, cache.Index()
			}
		}
		return name, nil
	})
	return mux
}

// since says " since <t> (<how long>)", or "" for a zero t.
func since(now, t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return fmt.Sprintf(" since %s (%v)", t.UTC().Format(time.RFC3339), now.Sub(t).Round(time.Second))
}
