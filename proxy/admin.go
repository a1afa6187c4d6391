package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/routecache"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/replproxy/replproxy/internal/admin"
)

// adminMux serves the admin listener: /healthz, /readyz (the Server's
// ready check), /metrics, /debug/route, /loglevel (ServerConfig.LogLevel),
// /debug/index/passed (when the name index applied a change: see
// admin.IndexPassed) and /debug/pprof/.
func (s *Server) adminMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if s.ready != nil {
			ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
			defer cancel()
			if err := s.ready(ctx); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write([]byte("not ready: " + err.Error() + "\n"))
				return
			}
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	if s.gather != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(s.gather, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET /debug/route", s.debugRoute)
	if s.cfg.LogLevel != nil {
		mux.Handle("/loglevel", s.cfg.LogLevel)
	}
	admin.HandlePprof(mux)
	admin.HandleIndexPassed(mux, func(string) (string, *routecache.Index) {
		if c, ok := s.handler.routes.(indexedRoutes); ok {
			return s.handler.cfg.Cluster, c.Index()
		}
		return s.handler.cfg.Cluster, nil
	})
	return mux
}

// indexedRoutes is a Routes with a name index, which /debug/index/passed
// reads: routecache.Cache (nil when made without one, by New).
type indexedRoutes interface {
	Index() *routecache.Index
}

var _ indexedRoutes = (*routecache.Cache)(nil)

// RouteInfo is what GET /debug/route?host=NAME answers, as JSON: where
// this proxy sends a request for NAME now (from its route cache, as a
// request would).
type RouteInfo struct {
	Host       string   `json:"host"`
	Route      string   `json:"route"` // "local", "tombstone" or "not-found"
	ReplID     string   `json:"repl_id,omitempty"`
	Cluster    string   `json:"cluster,omitempty"` // a tombstone's destination
	Generation int64    `json:"generation,omitempty"`
	Endpoints  []string `json:"endpoints,omitempty"`
	Asleep     bool     `json:"asleep,omitempty"` // local: the repl is asleep (a request wakes it)
}

func (s *Server) debugRoute(w http.ResponseWriter, r *http.Request) {
	host := r.URL.Query().Get("host")
	key, err := s.handler.cfg.Zone.ParseName(host)
	if err != nil || !key.Routable() {
		msg := "not a routable name under the zone"
		if err != nil {
			msg = err.Error()
		}
		http.Error(w, "host "+strconv.Quote(host)+": "+msg+" (want ?host=<slug>.<owner>.<zone>, <id>.id.<zone> or a custom domain)", http.StatusBadRequest)
		return
	}
	info := RouteInfo{Host: host, Route: routeNotFound}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	route, err := s.handler.routes.Lookup(ctx, key)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		http.Error(w, "lookup "+host+": "+err.Error(), http.StatusServiceUnavailable)
		return
	default:
		info.Route, info.ReplID, info.Generation = route.Kind.String(), route.ReplID, route.Generation
		info.Cluster, info.Endpoints, info.Asleep = route.Cluster, route.Endpoints, route.Asleep
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(info)
}
